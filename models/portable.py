"""Plain-torch twins of the trained models over padded inputs: the graphs that get exported.

Each twin reuses the trained dense layers as they are and swaps only the TorchRec embedding
lookup for :class:`PaddedEmbeddingBags`, so export parity is a property checked in tests.
"""

from __future__ import annotations

import torch
from torch import nn

from rankforge.features.feature_spec import DENSE_INPUT
from rankforge.models.padded_embeddings import PaddedEmbeddingBags
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import Scoring


class TowerTwin(nn.Module):
    """One tower of a :class:`TwoTower`: padded ids in, embedding out."""

    def __init__(self, model: nn.Module, side: str) -> None:
        super().__init__()
        if side not in ("user", "item"):
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
        ebc = model.user_ebc if side == "user" else model.item_ebc
        self.embeddings = PaddedEmbeddingBags(ebc)
        self.tower = model.user_tower if side == "user" else model.item_tower
        self.input_names = list(self.embeddings.feature_names)

    def forward(self, *ids: torch.Tensor) -> torch.Tensor:
        pooled = self.embeddings(dict(zip(self.input_names, ids, strict=True)))
        return self.tower(pooled.flatten(1))


class ScoringSpaceTwin(nn.Module):
    """One side of a retrieval model over padded ids, returning scoring-space vectors: the graph
    that is exported, so every inner product downstream is the model's own score."""

    def __init__(self, model: RetrievalModel, side: str) -> None:
        super().__init__()
        if side not in ("user", "item"):
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
        self.twin = model.portable(side)
        self.input_names: list[str] = list(self.twin.input_names)
        self.side = side
        self.scoring: Scoring = model.scoring

    def forward(self, *ids: torch.Tensor) -> torch.Tensor:
        raw = self.twin(*ids)
        return self.scoring.query(raw) if self.side == "user" else self.scoring.candidate(raw)


class RankerTwin(nn.Module):
    """A :class:`RankingModel` over ``(dense, *padded sparse ids)``; returns logits ``[B]``."""

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        dlrm = model.dlrm
        self.embeddings = PaddedEmbeddingBags(dlrm.sparse_arch.embedding_bag_collection)
        self.dense_arch = dlrm.dense_arch
        self.inter_arch = dlrm.inter_arch
        self.over_arch = dlrm.over_arch
        self.input_names = [DENSE_INPUT, *self.embeddings.feature_names]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` = (dense, *ids) flat, so every twin exports with one dynamic-shape spec."""
        dense, ids = inputs[0], inputs[1:]
        sparse = self.embeddings(dict(zip(self.input_names[1:], ids, strict=True)))
        interacted = self.inter_arch(dense_features=self.dense_arch(dense), sparse_features=sparse)
        return self.over_arch(interacted).squeeze(-1)

"""Ranking model: TorchRec's DLRM over user/item sparse features and dense aggregates.

DLRM's pairwise feature interactions are the standard CTR baseline in TorchRec; we use the library
module rather than a hand-written copy, and only decide which features go in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

from rankforge.models.inputs import SparseFeature


class RankingModel(nn.Module):
    """CTR logit for (user, item) pairs from sparse ids and dense features."""

    def __init__(
        self,
        sparse: list[SparseFeature],
        dense_features: Sequence[str],
        embedding_dim: int = 16,
        dense_sizes: Sequence[int] = (32,),
        over_sizes: Sequence[int] = (64, 1),
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if over_sizes[-1] != 1:
            raise ValueError("over_sizes must end with 1 (a single logit)")
        self.sparse = list(sparse)
        self.dense_features = tuple(dense_features)
        self.embedding_dim = embedding_dim
        ebc = EmbeddingBagCollection(tables=[f.table_config(embedding_dim) for f in sparse], device=device)
        self.dlrm = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=len(self.dense_features),
            dense_arch_layer_sizes=[*dense_sizes, embedding_dim],
            over_arch_layer_sizes=list(over_sizes),
            dense_device=device if device is not None and device.type != "meta" else None,
        )

    @property
    def sparse_keys(self) -> list[str]:
        return [f.name for f in self.sparse]

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Logits ``[B]``."""
        return self.dlrm(dense, sparse).squeeze(-1)

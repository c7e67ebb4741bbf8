"""Retrieval two-tower model: user and item towers over TorchRec embedding tables.

The towers meet only through the model's scoring function (inner product of scoring-space
vectors, see :mod:`rankforge.models.scoring`), so item vectors can be computed once and searched
with top-K at serving time. Each tower has its own EmbeddingBagCollection, so the sharding planner
can place user and item tables independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from rankforge.models.inputs import SparseFeature
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import DOT, Scoring


def tower_mlp(in_features: int, layer_sizes: Sequence[int]) -> nn.Sequential:
    """ReLU MLP with a linear last layer (an embedding, not an activation)."""
    layers: list[nn.Module] = []
    for i, size in enumerate(layer_sizes):
        layers.append(nn.Linear(in_features, size))
        if i < len(layer_sizes) - 1:
            layers.append(nn.ReLU())
        in_features = size
    return nn.Sequential(*layers)


class TwoTower(RetrievalModel):
    def __init__(
        self,
        user_sparse: list[SparseFeature],
        item_sparse: list[SparseFeature],
        embedding_dim: int = 32,
        tower_sizes: Sequence[int] = (64, 32),
        device: torch.device | None = None,
        scoring: Scoring = DOT,
    ) -> None:
        super().__init__()
        self.scoring = scoring
        if not tower_sizes:
            raise ValueError("tower_sizes must name at least one layer")
        self.user_sparse = list(user_sparse)
        self.item_sparse = list(item_sparse)
        self.embedding_dim = embedding_dim
        self.output_dim = tower_sizes[-1]
        self.user_ebc = EmbeddingBagCollection(
            tables=[f.table_config(embedding_dim) for f in user_sparse], device=device
        )
        self.item_ebc = EmbeddingBagCollection(
            tables=[f.table_config(embedding_dim) for f in item_sparse], device=device
        )
        dense_device = device if device is not None and device.type != "meta" else None
        self.user_tower = tower_mlp(embedding_dim * len(user_sparse), tower_sizes).to(dense_device)
        self.item_tower = tower_mlp(embedding_dim * len(item_sparse), tower_sizes).to(dense_device)

    @property
    def user_keys(self) -> list[str]:
        return [f.name for f in self.user_sparse]

    @property
    def item_keys(self) -> list[str]:
        return [f.name for f in self.item_sparse]

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.user_tower(self.user_ebc(user_kjt).values())

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.item_tower(self.item_ebc(item_kjt).values())

    def portable(self, side: str) -> nn.Module:
        from rankforge.models.portable import TowerTwin

        return TowerTwin(self, side)

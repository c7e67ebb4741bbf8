"""Retrieval two-tower model: user and item towers over TorchRec embedding tables.

The towers meet only through the model's scoring function (inner product of scoring-space
vectors, see :mod:`rankforge.models.scoring`), so item vectors can be computed once and searched
with top-K at serving time. Each tower has its own EmbeddingBagCollection, so the sharding planner
can place user and item tables independently.

Each tower is *residual* (:class:`ResidualTower`): its side's id embedding plus an MLP over all
of the side's pooled inputs (the id, the history, declared features), ``v = e_id + MLP(x)``, the
MLP's biases starting at zero. Why: an id reachable only through an MLP shares every weight of
that MLP with every other id, and under a loss that is not shift-invariant -- CCL's positive term
rewards raising every user-item cosine at once and its negatives push only above the margin -- the
shared weights learn one common direction within the first epoch: all items (and users) end up
at cosine 0.8-0.99 of each other, every score sits at the margin and the ranking is noise. Measured on
ml-latest-small (leave-last-out, CCL margin 0.6 / weight 20, 15 epochs): item-item cosine 0.84
and validation Recall@20 about the popularity floor with the plain MLP tower; 0.36 and well above
the floor with the residual one, where each id keeps a free vector of its own, as in YouTube DNN's
item side and in matrix factorisation. Softmax and pairwise losses (shift-invariant) were not
hurt by the plain tower but train the same or better with this one (benchmarks/README.md, the
quality suite).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from rankforge.features.feature_spec import ITEM_ID, USER_ID
from rankforge.models.inputs import SparseFeature
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import DOT, Scoring


def tower_mlp(in_features: int, layer_sizes: Sequence[int]) -> nn.Sequential:
    """ReLU MLP with a linear last layer (an embedding, not an activation); biases start at zero,
    so the first outputs are not one shared bias vector."""
    layers: list[nn.Module] = []
    for i, size in enumerate(layer_sizes):
        linear = nn.Linear(in_features, size)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(layer_sizes) - 1:
            layers.append(nn.ReLU())
        in_features = size
    return nn.Sequential(*layers)


class ResidualTower(nn.Module):
    """``forward(pooled [B, n_inputs * d]) -> [B, out]``: the id embedding (the ``d`` columns at
    ``id_offset``, mapped to ``out`` by a bias-free linear layer when ``out != d``) plus an MLP
    over every pooled input (see the module docstring for why the id passes through)."""

    def __init__(
        self, in_features: int, layer_sizes: Sequence[int], id_offset: int, embedding_dim: int
    ) -> None:
        super().__init__()
        self.mlp = tower_mlp(in_features, layer_sizes)
        self.id_offset = id_offset
        self.embedding_dim = embedding_dim
        out = layer_sizes[-1]
        self.id_projection = None if out == embedding_dim else nn.Linear(embedding_dim, out, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        ids = pooled[:, self.id_offset : self.id_offset + self.embedding_dim]
        if self.id_projection is not None:
            ids = self.id_projection(ids)
        return ids + self.mlp(pooled)


def side_tower(
    sparse: Sequence[SparseFeature], id_name: str, sizes: Sequence[int], embedding_dim: int
) -> ResidualTower:
    """The :class:`ResidualTower` of one side whose pooled inputs are ``sparse`` (in table
    order), its id input named ``id_name``."""
    names = [f.name for f in sparse]
    if id_name not in names:
        raise ValueError(f"a two-tower side needs its id input {id_name!r}; got {names}")
    return ResidualTower(
        embedding_dim * len(sparse), sizes, embedding_dim * names.index(id_name), embedding_dim
    )


class TwoTower(RetrievalModel):
    def __init__(
        self,
        user_sparse: list[SparseFeature],
        item_sparse: list[SparseFeature],
        embedding_dim: int = 32,
        tower_sizes: Sequence[int] = (64, 32),
        device: torch.device | None = None,
        scoring: Scoring = DOT,
        init_std: float | None = None,
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
            tables=[f.table_config(embedding_dim, init_std) for f in user_sparse], device=device
        )
        self.item_ebc = EmbeddingBagCollection(
            tables=[f.table_config(embedding_dim, init_std) for f in item_sparse], device=device
        )
        dense_device = device if device is not None and device.type != "meta" else None
        self.user_tower = side_tower(user_sparse, USER_ID, tower_sizes, embedding_dim).to(dense_device)
        self.item_tower = side_tower(item_sparse, ITEM_ID, tower_sizes, embedding_dim).to(dense_device)

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

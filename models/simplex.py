"""SimpleX (Mao et al., "SimpleX: A Simple and Strong Baseline for Collaborative Filtering", CIKM 2021).

Matrix factorisation plus a *behaviour aggregation* of the user's interacted items (Sec. 3.2)::

    p_u = mean_{j in H_u} e_j                     (the "mean" aggregator, padding ignored)
    h_u = g * e_u + (1 - g) * V p_u               (V: d x d linear map, no bias; g: the gating weight)
    score(u, i) = cos(h_u, e_i)                   (with dropout on h_u while training)

``H_u`` is read from the *item* table (``user_history`` is a second feature of the item table), as
in the authors' code where history and candidate items share one embedding matrix. The gating
weight ``g`` is the paper's fixed hyper-parameter (0.5 in the reference implementation; ``g = 1``
reduces SimpleX to MF). Users and items live in one EmbeddingBagCollection, so one training step is
one lookup.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from rankforge.models.matrix_factorization import id_table
from rankforge.models.padded_embeddings import PaddedEmbeddingBags
from rankforge.models.retrieval import RetrievalModel, ebc_keys, merged_kjt
from rankforge.models.scoring import COSINE, Scoring


class SimpleX(RetrievalModel):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        gamma: float = 0.5,
        dropout: float = 0.1,
        scoring: Scoring = COSINE,
        init_std: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma (the gating weight) must lie in [0, 1], got {gamma!r}")
        self.scoring = scoring
        self.gamma = float(gamma)
        self.output_dim = embedding_dim
        self.ebc = EmbeddingBagCollection(
            tables=[
                id_table("t_user_id", ["user_id"], n_users, embedding_dim, init_std),
                id_table("t_item_id", ["item_id", "user_history"], n_items, embedding_dim, init_std),
            ],
            device=device,
        )
        self.ebc_keys = ebc_keys(self.ebc)  # fixed at build: a sharded EBC no longer lists its configs
        dense_device = device if device is not None and device.type != "meta" else None
        self.history_map = nn.Linear(embedding_dim, embedding_dim, bias=False, device=dense_device)
        self.dropout = nn.Dropout(dropout)

    @property
    def user_keys(self) -> list[str]:
        return ["user_id", "user_history"]

    @property
    def item_keys(self) -> list[str]:
        return ["item_id"]

    def aggregate(self, user: torch.Tensor, history_mean: torch.Tensor) -> torch.Tensor:
        """``g * e_u + (1 - g) * V p_u``; an empty history pools to zero and leaves ``g * e_u``."""
        return self.gamma * user + (1.0 - self.gamma) * self.history_map(history_mean)

    def _pooled(self, *parts: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        return self.ebc(merged_kjt(list(parts), self.ebc_keys)).to_dict()

    def _user(self, pooled: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        return self.dropout(self.aggregate(pooled["user_id"][:n], pooled["user_history"][:n]))

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._user(self._pooled(user_kjt), user_kjt.stride())

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._pooled(item_kjt)["item_id"][: item_kjt.stride()]

    def forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self._pooled(user_kjt, item_kjt)  # one lookup per step
        return self._user(pooled, user_kjt.stride()), pooled["item_id"][: item_kjt.stride()]

    def portable(self, side: str) -> nn.Module:
        if side == "item":
            from rankforge.models.matrix_factorization import _IdTwin

            return _IdTwin(self.ebc, "item_id")
        return _SimpleXUserTwin(self)


class _SimpleXUserTwin(nn.Module):
    def __init__(self, model: SimpleX) -> None:
        super().__init__()
        self.embeddings = PaddedEmbeddingBags(model.ebc, features=["user_id", "user_history"])
        self.input_names = list(self.embeddings.feature_names)  # user_id, user_history
        self.history_map = model.history_map
        self.gamma = model.gamma

    def forward(self, user_id: torch.Tensor, user_history: torch.Tensor) -> torch.Tensor:
        pooled = self.embeddings({"user_id": user_id, "user_history": user_history})
        return self.gamma * pooled[:, 0] + (1.0 - self.gamma) * self.history_map(pooled[:, 1])

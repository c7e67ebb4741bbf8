"""SimpleX (Mao et al., "SimpleX: A Simple and Strong Baseline for Collaborative Filtering", CIKM 2021).

Matrix factorisation plus a *behaviour aggregation* of the user's interacted items (Sec. 3.2)::

    p_u = mean_{j in H_u} e_j                     (the "mean" aggregator, padding ignored)
    h_u = g * e_u + (1 - g) * V p_u               (V: d x d linear map, no bias; g: the gating weight)
    score(u, i) = cos(h_u, e_i)                   (with dropout on h_u while training)

``H_u`` is read from the *item* table (``user_history`` is a second feature of the item table), as
in the authors' code where history and candidate items share one embedding matrix. The gating
weight ``g`` is the paper's fixed hyper-parameter (0.5 in the reference implementation; ``g = 1``
reduces SimpleX to MF).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection

from rankforge.models.id_tables import IdTableModel, IdTwin, id_table
from rankforge.models.padded_embeddings import PaddedEmbeddingBags
from rankforge.models.scoring import COSINE, Scoring


class SimpleX(IdTableModel):
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
        self._collection_built()
        dense_device = device if device is not None and device.type != "meta" else None
        self.history_map = nn.Linear(embedding_dim, embedding_dim, bias=False, device=dense_device)
        self.dropout = nn.Dropout(dropout)

    @property
    def user_keys(self) -> list[str]:
        return ["user_id", "user_history"]

    def aggregate(self, user: torch.Tensor, history_mean: torch.Tensor) -> torch.Tensor:
        """``g * e_u + (1 - g) * V p_u``; an empty history pools to zero and leaves ``g * e_u``."""
        return self.gamma * user + (1.0 - self.gamma) * self.history_map(history_mean)

    def _user(self, pooled: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        return self.dropout(self.aggregate(pooled["user_id"][:n], pooled["user_history"][:n]))

    def portable(self, side: str) -> nn.Module:
        return IdTwin(self.ebc, "item_id") if side == "item" else _SimpleXUserTwin(self)


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

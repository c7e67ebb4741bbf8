"""Pure matrix factorisation: one embedding table for users, one for items, nothing else.

The model of MF-BPR (Rendle et al. 2009) and of SimpleX's "MF-CCL" (Mao et al. 2021, Table 3):
``score(u, i) = sim(e_u, e_i)``, with ``sim`` the model's scoring function (dot or cosine).
``dropout`` (the MF-CCL config's ``embedding_dropout`` in the SimpleX authors' code) drops entries
of the normalised user vector while training.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection

from rankforge.models.id_tables import IdTableModel, IdTwin, id_table
from rankforge.models.scoring import DOT, Scoring


class MatrixFactorization(IdTableModel):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        scoring: Scoring = DOT,
        init_std: float | None = None,
        device: torch.device | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.scoring = scoring
        self.output_dim = embedding_dim
        self.ebc = EmbeddingBagCollection(
            tables=[
                id_table("t_user_id", ["user_id"], n_users, embedding_dim, init_std),
                id_table("t_item_id", ["item_id"], n_items, embedding_dim, init_std),
            ],
            device=device,
        )
        self._collection_built()
        if dropout > 0:
            self.query_dropout = nn.Dropout(dropout)

    @property
    def user_keys(self) -> list[str]:
        return ["user_id"]

    def _user(self, pooled: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        return pooled["user_id"][:n]

    def portable(self, side: str) -> nn.Module:
        return IdTwin(self.ebc, "user_id" if side == "user" else "item_id")

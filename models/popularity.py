"""Most popular items: the non-personalised floor every retrieval quality table should show.

``score(u, i) = log(1 + training events of i)`` for every user; with the user's known items
excluded (as every evaluation and the server do), each user gets the most popular items they have
not interacted with. Nothing is trained: the scores are counted from the training events. It is a
retrieval model like the others — one-dimensional vectors (the user side a constant 1, the item
side the log-popularity) scored by inner product — so it is validated, exported, A/B-tested and
served through the same code.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import DOT


class MostPopular(RetrievalModel):
    def __init__(self, item_events: torch.Tensor) -> None:
        super().__init__()
        self.scoring = DOT
        self.output_dim = 1
        self.register_buffer("popularity", torch.log1p(item_events.double()).float().reshape(-1, 1))

    @property
    def user_keys(self) -> list[str]:
        return ["user_id"]

    @property
    def item_keys(self) -> list[str]:
        return ["item_id"]

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return torch.ones(user_kjt.stride(), 1)

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        ids = item_kjt["item_id"]
        if not bool((ids.lengths() == 1).all()):
            raise ValueError("MostPopular scores exactly one item_id per row")
        return self.popularity[ids.values()]

    def portable(self, side: str) -> nn.Module:
        return _ConstantUser() if side == "user" else _ItemPopularity(self.popularity)


class _ConstantUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_names = ["user_id"]

    def forward(self, user_id: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(user_id, dtype=torch.float32)  # [B, 1]


class _ItemPopularity(nn.Module):
    def __init__(self, popularity: torch.Tensor) -> None:
        super().__init__()
        self.input_names = ["item_id"]
        self.register_buffer("popularity", popularity.clone())

    def forward(self, item_id: torch.Tensor) -> torch.Tensor:
        return self.popularity[item_id.clamp(min=0)[:, 0]]  # [B, 1]; padding reads row 0

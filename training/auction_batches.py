"""Auction-grouped training batches: whole auctions, padded per auction to ``[A, M]`` ads.

The welfare rankloss compares ads of the same auction, so an auction is never split across
batches or ranks: each global batch of auctions is drawn from the seeded stream (as every other
batch kind, see ``batches``) and each rank keeps a contiguous slice of its auctions. Every ad row
carries the auction's user with their latest history and the item's features, as served; a
teacher (``objective.reference``) scores the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torchrec import KeyedJaggedTensor

from rankforge.errors import DataError
from rankforge.features.auctions import AuctionTensors
from rankforge.features.feature_spec import USER_HISTORY, USER_ID
from rankforge.models.inputs import PAD, padded_to_kjt
from rankforge.training.batches import FeatureTables, _Batches, rank_slice
from rankforge.training.reference import Reference

#: A teacher logit that makes sigmoid(t) the click itself (|t| = 30: 1e-13 away), for rows the
#: teacher cannot score: their calibrated label is then the logged click.
CLICK_LOGIT = 30.0


@dataclass(frozen=True)
class AuctionBatch:
    dense: torch.Tensor  # [A * M, n_dense]
    sparse: KeyedJaggedTensor  # A * M (user, ad) rows, user then item keys
    labels: torch.Tensor  # [A, M] clicks
    bids: torch.Tensor  # [A, M]
    mask: torch.Tensor  # [A, M] bool
    teacher_logits: torch.Tensor  # [A, M] (unused without a teacher)
    has_teacher: bool

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> AuctionBatch:
        return AuctionBatch(
            self.dense.to(device),
            self.sparse.to(device),
            self.labels.to(device),
            self.bids.to(device),
            self.mask.to(device),
            self.teacher_logits.to(device),
            self.has_teacher,
        )


def auction_rows(
    auctions: AuctionTensors, tables: FeatureTables
) -> tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense, sparse, users, items, histories) of every ``[A, M]`` slot, flattened; padding slots
    hold the auction's first ad (``AuctionTensors.filled_ads``), cold users (-1) padding history."""
    if tables.layout.context:
        raise DataError(
            f"auction logs carry no request context; the data declares {tables.layout.context_names}"
        )
    a, m = auctions.ads.shape
    ads = auctions.filled_ads().reshape(-1)
    users = auctions.users.repeat_interleave(m)
    known = users >= 0
    user_features = {USER_ID: users.reshape(-1, 1)}
    for name, table in tables.user_lists.items():  # the history and declared user lists
        rows = torch.full((a * m, table.shape[1]), PAD, dtype=torch.int64)
        rows[known] = table[users[known]]
        user_features[name] = rows
    history = user_features[USER_HISTORY]
    dense = torch.zeros(a * m, tables.user_dense.shape[1] + tables.item_dense.shape[1])
    dense[:, tables.user_dense.shape[1] :] = tables.item_dense[ads]
    dense[known, : tables.user_dense.shape[1]] = tables.user_dense[users[known]]
    sparse = padded_to_kjt({**user_features, **tables.items(ads)}, tables.user_keys + tables.item_keys)
    return dense, sparse, users, ads, history


class AuctionBatches(_Batches):
    def __init__(
        self,
        auctions: AuctionTensors,
        tables: FeatureTables,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        teacher: Reference | None = None,
    ) -> None:
        super().__init__(auctions.n_auctions, batch_size, rank, world_size, seed)
        self.auctions = auctions
        self.tables = tables
        self.teacher = teacher

    def __iter__(self) -> Iterator[AuctionBatch]:
        for rows in self._global_batches():
            n = len(rows) - len(rows) % self.world_size
            part = self.auctions.take(rows[rank_slice(n, self.rank, self.world_size)])
            dense, sparse, users, ads, history = auction_rows(part, self.tables)
            shape = part.ads.shape
            if self.teacher is None:
                teacher = torch.zeros(shape)
            else:
                logits, covered = self.teacher(users, ads, history, dense)
                fallback = (2.0 * part.clicks - 1.0) * CLICK_LOGIT
                teacher = torch.where(covered.reshape(shape), logits.reshape(shape), fallback)
            yield AuctionBatch(
                dense, sparse, part.clicks, part.bids, part.mask, teacher, self.teacher is not None
            )

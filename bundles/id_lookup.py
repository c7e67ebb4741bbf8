"""Raw id -> dense index lookups for a bundle's id mapping, vectorised for the request path."""

from __future__ import annotations

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.id_mapping import IdMapping
from rankforge.features.schema import ITEM, ITEM_IDX, USER, USER_IDX

UNKNOWN = -1


def find_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in the ascending ``sorted_ids`` (``[m]`` int64), ``-1`` where
    it is not there: one ``searchsorted``, no per-id Python lookups."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), UNKNOWN, dtype=np.int64)
    # searchsorted is never negative: a minimum suffices (np.clip costs ~10 us of Python per call)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, UNKNOWN)


class IdLookup:
    """Sorted raw ids + ``searchsorted``: no per-id Python dict lookups on the hot path."""

    def __init__(self, frame: pl.DataFrame, raw: str, index: str) -> None:
        if frame.height == 0 or raw not in frame.columns or index not in frame.columns:
            raise DataError(f"id mapping needs rows with {raw!r} and {index!r}")
        ordered = frame.sort(raw)
        self._raw = ordered[raw].to_numpy().astype(np.int64)
        self._index = ordered[index].to_numpy().astype(np.int64)
        if np.any(self._raw[1:] == self._raw[:-1]):
            raise DataError(f"id mapping has duplicate {raw!r} values")
        self.raw_of = np.empty(len(self._raw), dtype=np.int64)
        self.raw_of[self._index] = self._raw

    @classmethod
    def users(cls, mapping: IdMapping) -> IdLookup:
        """Raw user id -> user index of an id mapping."""
        return cls(mapping.users, USER, USER_IDX)

    @classmethod
    def items(cls, mapping: IdMapping) -> IdLookup:
        """Raw item id -> item index of an id mapping."""
        return cls(mapping.items, ITEM, ITEM_IDX)

    def __len__(self) -> int:
        return len(self._raw)

    def encode(self, raw_ids: np.ndarray) -> np.ndarray:
        """Dense indices, ``-1`` for ids the bundle never saw."""
        pos = find_sorted(self._raw, raw_ids)
        return np.where(pos >= 0, self._index[pos], UNKNOWN)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.raw_of[np.asarray(indices, dtype=np.int64)]


def translate_ids(ours: IdMapping, theirs: IdMapping) -> dict[str, np.ndarray]:
    """Per id space (``users``, ``items``): our dense index -> theirs, ``-1`` where the other
    mapping does not know the raw id (a model trained on other data: a reference, a warm start)."""
    users = IdLookup.users(theirs).encode(ours.users.sort(USER_IDX)[USER].to_numpy())
    items = IdLookup.items(theirs).encode(ours.items.sort(ITEM_IDX)[ITEM].to_numpy())
    return {"users": users, "items": items}

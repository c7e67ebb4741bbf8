"""Every user's time-ordered positives as one flat array: point-in-time histories by gather.

Materialising a ``history_len`` list on every training example costs ``history_len`` ids per
event (100M events: 16 GB of ids at length 20). Out-of-core examples carry ``n_before`` instead
(how many positives the user had strictly before the example, see
:func:`rankforge.features.history.with_positives_before`); the history is then the last
``max_len`` of the user's first ``n_before`` positives: a slice of this array, gathered per
batch. Memory is one id per positive, whatever the history length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import ITEM_IDX, USER_IDX

PAD = -1


def padded_id_lists(values: pl.Series | list[list[int]], max_len: int) -> np.ndarray:
    """Right-pad (and truncate, keeping the most recent tail) id lists to int64 ``[n, max_len]``."""
    series = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.List(pl.Int64))
    if series.dtype != pl.List(pl.Int64):
        series = series.cast(pl.List(pl.Int64))
    padded = (
        series.fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
        .list.tail(max_len)
        .list.concat(pl.lit([PAD] * max_len, dtype=pl.List(pl.Int64)))
        .list.head(max_len)
        .list.to_array(max_len)
    )
    return np.array(padded.to_numpy(), dtype=np.int64).reshape(len(series), max_len)


@dataclass(frozen=True)
class RaggedIds:
    """Id lists of ``n`` rows as one flat array: row ``r``'s ids are
    ``values[offsets[r]:offsets[r + 1]]`` (``offsets`` int64 ``[n + 1]``)."""

    values: np.ndarray  # int64 [offsets[-1]]
    offsets: np.ndarray  # int64 [n + 1]

    @classmethod
    def from_series(cls, series: pl.Series) -> RaggedIds:
        """From a list column (a null row is an empty list); a null id inside a list is refused."""
        lengths = series.list.len().fill_null(0).to_numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = series.explode().drop_nulls().cast(pl.Int64).to_numpy()
        if len(values) != offsets[-1]:
            raise DataError(f"id list column {series.name!r} holds null ids")
        return cls(values=np.ascontiguousarray(values, dtype=np.int64), offsets=offsets)

    def row(self, r: int) -> np.ndarray:
        return self.values[self.offsets[r] : self.offsets[r + 1]]

    def tails(self, rows: np.ndarray, counts: np.ndarray, max_len: int) -> np.ndarray:
        """``[n, max_len]`` int64: of each row's first ``counts`` ids, the last ``max_len``
        (oldest first), right-padded with ``-1``, exactly as ``pad_lists`` pads list columns."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        kept = np.minimum(counts, max_len)
        first = self.offsets[rows] + counts - kept
        offsets = np.arange(max_len)[None, :]
        valid = offsets < kept[:, None]
        positions = np.where(valid, first[:, None] + offsets, 0)
        if len(self.values) == 0:
            return np.full((len(rows), max_len), PAD, dtype=np.int64)
        return np.where(valid, self.values[positions], PAD)

    def padded(self, rows: np.ndarray, max_len: int) -> np.ndarray:
        """``[n, max_len]``: each whole row's last ``max_len`` ids, right-padded with ``-1``."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.tails(rows, self.offsets[rows + 1] - self.offsets[rows], max_len)


class PositiveSequences(RaggedIds):
    """Every user's positives, user by user, each in time order: row ``u`` is user ``u``'s."""

    @classmethod
    def from_frame(cls, positives: pl.DataFrame, n_users: int) -> PositiveSequences:
        """From ``user_idx, item_idx`` rows already in (user, time) order within each user;
        users may come in any order (they are grouped here, stably)."""
        users = positives[USER_IDX].to_numpy()
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(values=positives[ITEM_IDX].to_numpy()[order].astype(np.int64), offsets=offsets)

    def histories(self, users: np.ndarray, n_before: np.ndarray, max_len: int) -> np.ndarray:
        """``[n, max_len]`` int64: each row's last ``max_len`` positives before it (oldest first),
        right-padded with ``-1``, exactly as ``pad_lists`` pads the list histories."""
        return self.tails(users, n_before, max_len)

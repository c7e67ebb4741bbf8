"""Item features of one feature version, held in process as columns: no per-request item reads.

A feature version is immutable, so its items' features are loaded once, when the server first
serves the version, from a few Arrow IPC blocks (``{prefix}:{version}:items:{block}``, written
by ``FeatureWriter``), into one table: sorted raw ids ``[n]``, dense features ``[n, n_dense]``
float32 and each declared id feature as ``features.sequences.RaggedIds``. A request
then finds its candidates with one ``searchsorted`` and gathers the ranker's feed with array
indexing: no Redis round trip, no record decoding, no Python loop over candidates.

A model's item ids meet the table through two arrays computed once per (version, model) and
kept with the table (:meth:`ItemTable.rows_of_index`, :meth:`ItemTable.index_of_rows`): the
rows of an index's results and the ranker's ids of candidate rows are then gathers, not binary
searches into a million ids (measured: 130 us per 200 ids with the cache cold, 21 us gathered).
The server computes them as a version loads and as a model swaps (``RankingServer``), so no
request pays for them.

Memory: 1M items with 4 dense features and no id list take about 24 MB; the ANN index of the
same catalogue is ten times that.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from rankforge.bundles.id_lookup import IdLookup, find_sorted
from rankforge.errors import DataError
from rankforge.features.aggregates import dense_matrix
from rankforge.features.schema import ITEM as ITEM_ID  # raw ids, as the log wrote them
from rankforge.features.sequences import RaggedIds

#: Items per stored block: ~2.5 MB each with a few dense features, so no Redis value is large
#: enough to stall the server that holds it while it is read.
BLOCK_ITEMS = 100_000
#: Model id spaces whose joins a table keeps (models change rarely; each join is 8 B per item).
KEPT_JOINS = 8


@dataclass(frozen=True)
class ItemTable:
    """Every item of one feature version. ``dense`` columns follow the version's meta
    ``item_dense``; ``lists`` its ``item_lists``, in order."""

    ids: np.ndarray  # int64 [n], sorted raw item ids
    dense: np.ndarray  # float32 [n, n_dense]
    lists: tuple[RaggedIds, ...]
    # (kind, id(lookup)) -> (lookup, array): the joins with model id spaces, computed once
    _joins: dict[tuple[str, int], tuple[IdLookup, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_raw: np.ndarray) -> np.ndarray:
        """Row of each raw id ``[m]``, ``-1`` for an item the version does not hold."""
        return find_sorted(self.ids, item_raw)

    def rows_of_index(self, lookup: IdLookup) -> np.ndarray:
        """``[len(lookup)]``: the row of each dense index of ``lookup`` (a retrieval model's item
        id space), ``-1`` where this version lacks the item. Computed on first use, then kept."""
        return self._join("rows", lookup, lambda: self.rows(lookup.raw_of))

    def index_of_rows(self, lookup: IdLookup) -> np.ndarray:
        """``[n]``: each row's dense index in ``lookup``'s id space (a ranker's), ``-1`` for an
        item the model never saw. Computed on first use, then kept."""
        return self._join("index", lookup, lambda: lookup.encode(self.ids))

    def _join(self, kind: str, lookup: IdLookup, compute: Callable[[], np.ndarray]) -> np.ndarray:
        key = (kind, id(lookup))
        kept = self._joins.get(key)
        if kept is not None and kept[0] is lookup:  # the lookup is held, so its id is not reused
            return kept[1]
        joined = compute()  # sorted against sorted ids: tens of ms for 1M items, once
        with self._lock:
            while len(self._joins) >= KEPT_JOINS:
                del self._joins[next(iter(self._joins))]
            self._joins[key] = (lookup, joined)
        return joined

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, dense: list[str], lists: list[str]) -> ItemTable:
        """A table from item rows: ``item_id``, the ``dense`` float columns and the ``lists`` id
        list columns (any order of rows; ids must be unique)."""
        missing = [c for c in (ITEM_ID, *dense, *lists) if c not in frame.columns]
        if missing:
            raise DataError(f"item features lack column(s) {missing}; they have {frame.columns}")
        frame = frame.sort(ITEM_ID)
        ids = frame[ITEM_ID].cast(pl.Int64).to_numpy()
        if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
            raise DataError(f"item features hold item id {int(ids[1:][ids[1:] == ids[:-1]][0])} twice")
        return cls(
            ids=ids,
            dense=dense_matrix(frame, dense) if dense else np.empty((len(ids), 0), np.float32),
            lists=tuple(RaggedIds.from_series(frame[c]) for c in lists),
        )

    def to_frame(self, dense: list[str], lists: list[str]) -> pl.DataFrame:
        """The rows again (``from_frame``'s inverse), for tests and tools."""
        columns: dict[str, object] = {ITEM_ID: self.ids}
        columns.update({name: self.dense[:, j] for j, name in enumerate(dense)})
        columns.update(
            {
                name: pl.Series(name, [ragged.row(r) for r in range(len(self))], dtype=pl.List(pl.Int64))
                for name, ragged in zip(lists, self.lists, strict=True)
            }
        )
        return pl.DataFrame(columns)


def encode_blocks(frame: pl.DataFrame, block_items: int = BLOCK_ITEMS) -> list[bytes]:
    """Item rows as Arrow IPC blocks of at most ``block_items`` rows (at least one block)."""
    blocks = []
    for start in range(0, max(frame.height, 1), block_items):
        sink = io.BytesIO()
        frame.slice(start, block_items).write_ipc(sink, compression="uncompressed")
        blocks.append(sink.getvalue())
    return blocks


def decode_blocks(blocks: list[bytes], dense: list[str], lists: list[str]) -> ItemTable:
    """The table of a version's stored blocks; a block that is not Arrow IPC is a ``DataError``."""
    frames = []
    for n, raw in enumerate(blocks):
        try:
            frames.append(pl.read_ipc(io.BytesIO(raw)))
        except Exception as exc:  # polars raises ComputeError/ArrowError/OSError on foreign bytes
            raise DataError(f"item feature block {n} does not decode ({len(raw)} bytes): {exc}") from exc
    return ItemTable.from_frame(pl.concat(frames, how="vertical_relaxed"), dense, lists)

"""Dense integer ids for users, items and genres, built once on training data.

Embedding tables need ids in ``[0, n)``; the mapping is kept (and saved next to the model) so the
serving side encodes requests exactly as training did. Ids unseen in training map to nothing and
their rows are dropped, since no embedding was ever learned for them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import ITEM, ITEM_IDX, USER, USER_IDX, require_columns
from rankforge.features.string_ids import ITEM_KEY, USER_KEY


def _keys(frame: pl.LazyFrame | pl.DataFrame, key: str) -> list[str]:
    """``[key]`` when the frame carries string ids (see ``features.string_ids``), else ``[]``."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return [key] if key in names else []


COMPACT_SLACK = 4  # a table lookup while the raw-id range is at most this many times the ids (+1024)


def _index_of(ids: pl.DataFrame, column: str, index: str) -> pl.Expr:
    """An expression: each row's ``index`` for its raw id in ``column``, null where ``ids`` lacks
    it. Integer ids in a compact range (most logs' own numbering) are looked up in a dense table
    (one gather: a tenth of the time of a hash lookup on 4M rows against 500k ids); other ids
    (hashes of string ids, sparse numbers) through a hash map."""
    raw = ids[column]
    if ids.height and raw.dtype.is_integer():
        lo, hi = int(raw.min()), int(raw.max())
        if hi - lo < COMPACT_SLACK * ids.height + 1024:
            table = np.full(hi - lo + 1, -1, dtype=np.int64)
            table[(raw - lo).to_numpy()] = ids[index].to_numpy()
            offset = pl.col(column).cast(pl.Int64) - lo
            found = pl.lit(pl.Series(table)).gather(offset.clip(0, hi - lo))
            return pl.when((offset >= 0) & (offset <= hi - lo) & (found >= 0)).then(found)
    return pl.col(column).replace_strict(raw, ids[index], default=None)


def _dense_ids(
    values: pl.LazyFrame | pl.DataFrame, column: str, index: str, keys: list[str] | None = None
) -> pl.DataFrame:
    """``column -> index`` (plus the string key of each id, for logs with string ids)."""
    keys = keys or []
    frame = values.lazy().select(pl.col(column), *keys).unique(subset=[column]).sort(column)
    return frame.with_row_index(index).select(pl.col(column), pl.col(index).cast(pl.Int64), *keys).collect()


@dataclass(frozen=True)
class IdMapping:
    users: pl.DataFrame  # user_id -> user_idx
    items: pl.DataFrame  # item_id -> item_idx

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    @classmethod
    def fit(cls, interactions: pl.LazyFrame | pl.DataFrame, items: pl.DataFrame | None = None) -> IdMapping:
        """Users come from the log; items from the log plus the item catalogue, if given.

        Catalogue items with no interactions still get an embedding row, so they can be served.
        """
        require_columns(interactions, [USER, ITEM], "id mapping")
        item_ids = interactions.lazy().select(ITEM, *_keys(interactions, ITEM_KEY))
        if items is not None:
            require_columns(items, [ITEM], "item catalogue")
            item_ids = pl.concat(
                [item_ids, items.lazy().select(ITEM, *_keys(items, ITEM_KEY))], how="diagonal_relaxed"
            )
        return cls.from_ids(interactions.lazy().select(USER, *_keys(interactions, USER_KEY)), item_ids)

    @classmethod
    def from_ids(cls, users: pl.LazyFrame | pl.DataFrame, items: pl.LazyFrame | pl.DataFrame) -> IdMapping:
        """Dense indices in raw-id order for the (possibly repeated) ids of ``users``/``items``
        (``user_id`` / ``item_id``, with their string keys when the log has string ids). The order
        is a contract: out-of-core preparation sorts its buckets by raw ids and relies on the
        encoded rows being sorted by indices too."""
        mapping = cls(
            users=_dense_ids(users, USER, USER_IDX, _keys(users, USER_KEY)),
            items=_dense_ids(items, ITEM, ITEM_IDX, _keys(items, ITEM_KEY)),
        )
        if mapping.n_users == 0 or mapping.n_items == 0:
            raise DataError("id mapping: no users or no items in the training data")
        return mapping

    def digest(self) -> str:
        """A short hash of both id spaces (which raw id has which row): two models with the same
        digest index the same users and items the same way."""
        h = hashlib.sha256()
        for frame, raw, idx in ((self.users, USER, USER_IDX), (self.items, ITEM, ITEM_IDX)):
            ordered = frame.sort(idx)
            h.update(ordered[raw].cast(pl.String).str.join("\x1f").item().encode())
            h.update(b"\x1e")
        return h.hexdigest()[:16]

    def user_index(self) -> pl.Expr:
        """An expression: the ``user_idx`` of each row's ``user_id``, null for a user unseen at
        fit time."""
        return _index_of(self.users, USER, USER_IDX).cast(pl.Int64).alias(USER_IDX)

    def item_index(self) -> pl.Expr:
        """An expression: the ``item_idx`` of each row's ``item_id``, null for an unseen item."""
        return _index_of(self.items, ITEM, ITEM_IDX).cast(pl.Int64).alias(ITEM_IDX)

    def encode(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add ``user_idx``/``item_idx``; rows with an id unseen at fit time are dropped. Rows stay
        in ``frame``'s order, and indices follow raw-id order, so a frame sorted by raw ids comes
        out sorted by indices as well (out-of-core preparation relies on it)."""
        return frame.with_columns(self.user_index(), self.item_index()).drop_nulls([USER_IDX, ITEM_IDX])

    def encode_raw(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add the raw ``user_id``/``item_id`` of ``user_idx``/``item_idx`` rows (row order kept)."""
        return frame.join(
            self.users.lazy().select(USER, USER_IDX), on=USER_IDX, how="left", maintain_order="left"
        ).join(self.items.lazy().select(ITEM, ITEM_IDX), on=ITEM_IDX, how="left", maintain_order="left")

    def encode_items(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.join(self.items.lazy().select(ITEM, ITEM_IDX), on=ITEM, how="inner")

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.users.write_parquet(d / "users.parquet")
        self.items.write_parquet(d / "items.parquet")

    @classmethod
    def load(cls, directory: str | Path) -> IdMapping:
        d = Path(directory)
        for name in ("users.parquet", "items.parquet"):
            if not (d / name).is_file():
                raise DataError(f"id mapping: {d / name} not found")
        return cls(users=pl.read_parquet(d / "users.parquet"), items=pl.read_parquet(d / "items.parquet"))

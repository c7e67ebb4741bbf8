"""Dense integer ids for users, items and genres, built once on training data.

Embedding tables need ids in ``[0, n)``; the mapping is kept (and saved next to the model) so the
serving side encodes requests exactly as training did. Ids unseen in training map to nothing and
their rows are dropped, since no embedding was ever learned for them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import ITEM, ITEM_IDX, USER, USER_IDX, require_columns
from rankforge.features.string_ids import ITEM_KEY, USER_KEY


def _keys(frame: pl.LazyFrame | pl.DataFrame, key: str) -> list[str]:
    """``[key]`` when the frame carries string ids (see ``features.string_ids``), else ``[]``."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return [key] if key in names else []


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
        (``user_id`` / ``item_id``, with their string keys when the log has string ids)."""
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

    def encode(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add ``user_idx``/``item_idx``; rows with an id unseen at fit time are dropped."""
        return frame.join(self.users.lazy().select(USER, USER_IDX), on=USER, how="inner").join(
            self.items.lazy().select(ITEM, ITEM_IDX), on=ITEM, how="inner"
        )

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

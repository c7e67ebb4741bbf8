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


def _dense_ids(values: pl.LazyFrame | pl.DataFrame, column: str, index: str) -> pl.DataFrame:
    frame = values.lazy().select(pl.col(column)).unique().sort(column)
    return frame.with_row_index(index).select(pl.col(column), pl.col(index).cast(pl.Int64)).collect()


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
        item_ids = interactions.lazy().select(ITEM)
        if items is not None:
            require_columns(items, [ITEM], "item catalogue")
            item_ids = pl.concat([item_ids, items.lazy().select(ITEM)])
        mapping = cls(
            users=_dense_ids(interactions, USER, USER_IDX), items=_dense_ids(item_ids, ITEM, ITEM_IDX)
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
        return frame.join(self.users.lazy(), on=USER, how="inner").join(
            self.items.lazy(), on=ITEM, how="inner"
        )

    def encode_raw(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add the raw ``user_id``/``item_id`` of ``user_idx``/``item_idx`` rows (row order kept)."""
        return frame.join(self.users.lazy(), on=USER_IDX, how="left", maintain_order="left").join(
            self.items.lazy(), on=ITEM_IDX, how="left", maintain_order="left"
        )

    def encode_items(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.join(self.items.lazy(), on=ITEM, how="inner")

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

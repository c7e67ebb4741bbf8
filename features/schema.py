"""The canonical interaction-log schema every loader produces.

One schema for all sources means splits, id mapping and aggregates are written once, whatever
the original file looked like.
"""

from __future__ import annotations

import polars as pl

from rankforge.errors import DataError

USER = "user_id"
ITEM = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
LABEL = "label"

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    USER: pl.Int64(),
    ITEM: pl.Int64(),
    RATING: pl.Float32(),
    TIMESTAMP: pl.Int64(),
}


def require_columns(
    frame: pl.LazyFrame | pl.DataFrame, columns: list[str] | tuple[str, ...], what: str
) -> None:
    """Fail with the list of missing columns instead of a deep Polars error later on."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; found {names}")


def require_rows(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """Empty data is an input error, not something to train on silently."""
    if frame.height == 0:
        raise DataError(f"{what}: no rows")
    return frame

"""Point-in-time user histories: the items a user liked *before* each example.

Using the whole training history as a feature would leak the label (the target item is in it);
an as-of join gives each example only what was known at its timestamp, and serving uses the same
code with "now" as the time, so offline and online features agree.
"""

from __future__ import annotations

import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import ITEM_IDX, LABEL, TIMESTAMP, USER_IDX, require_columns

HISTORY = "history"


def positive_sequences(events: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Positives numbered per user in time order, and each user's time-ordered positive list."""
    require_columns(events, [USER_IDX, ITEM_IDX, TIMESTAMP, LABEL], "user history")
    positives = (
        events.filter(pl.col(LABEL) > 0)
        .sort(USER_IDX, TIMESTAMP, ITEM_IDX)
        .with_columns((pl.int_range(pl.len()).over(USER_IDX) + 1).alias("_n_before"))
    )
    lists = positives.group_by(USER_IDX).agg(pl.col(ITEM_IDX).alias("_items"))
    return positives.select(USER_IDX, TIMESTAMP, "_n_before"), lists


def _slice_last(n_before: pl.Expr, max_len: int) -> pl.Expr:
    n_before = n_before.cast(pl.Int64)  # list lengths are unsigned: n - max_len must not wrap
    offset = (n_before - max_len).clip(lower_bound=0)
    length = n_before.clip(upper_bound=max_len)
    return pl.col("_items").list.slice(offset, length)


def with_point_in_time_history(examples: pl.LazyFrame, events: pl.LazyFrame, max_len: int) -> pl.LazyFrame:
    """Add ``history``: the user's last ``max_len`` positives strictly before each example."""
    if max_len < 1:
        raise DataError(f"history length must be >= 1, got {max_len}")
    require_columns(examples, [USER_IDX, TIMESTAMP], "history examples")
    numbered, lists = positive_sequences(events)
    cols = examples.collect_schema().names()
    joined = (
        examples.sort(TIMESTAMP)
        .join_asof(
            numbered.sort(TIMESTAMP),
            on=TIMESTAMP,
            by=USER_IDX,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # sorted by time within each user above; Polars cannot verify with `by`
        )
        .join(lists, on=USER_IDX, how="left")
        .with_columns(pl.col("_n_before").fill_null(0))
    )
    history = _slice_last(pl.col("_n_before"), max_len).fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
    return joined.select(*cols, history.alias(HISTORY))


def latest_history(events: pl.LazyFrame, max_len: int) -> pl.LazyFrame:
    """Each user's last ``max_len`` positives: the history the online feature store serves."""
    if max_len < 1:
        raise DataError(f"history length must be >= 1, got {max_len}")
    _, lists = positive_sequences(events)
    return lists.select(USER_IDX, _slice_last(pl.col("_items").list.len(), max_len).alias(HISTORY))

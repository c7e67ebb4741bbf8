"""Per-user and per-item aggregates: the dense features of the ranking model and the online store.

Computed on training events only, with lazy group-bys, so the same expressions run on a large log
with the streaming engine.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import ITEM_IDX, LABEL, RATING, TIMESTAMP, USER_IDX, require_columns

#: Dense features fed to the ranking model, in this order (user first, then item).
DENSE_FEATURES: tuple[str, ...] = ("user_log_events", "user_pos_rate", "item_log_popularity", "item_pos_rate")
USER_DENSE: tuple[str, ...] = DENSE_FEATURES[:2]
ITEM_DENSE: tuple[str, ...] = DENSE_FEATURES[2:]


def user_aggregates(events: pl.LazyFrame) -> pl.LazyFrame:
    require_columns(events, [USER_IDX, LABEL, TIMESTAMP], "user aggregates")
    return events.group_by(USER_IDX).agg(
        pl.len().log1p().cast(pl.Float32).alias("user_log_events"),
        pl.col(LABEL).mean().cast(pl.Float32).alias("user_pos_rate"),
        pl.col(RATING).mean().cast(pl.Float32).alias("user_mean_rating"),
        pl.col(TIMESTAMP).max().alias("user_last_ts"),
    )


def item_partials(events: pl.LazyFrame) -> pl.LazyFrame:
    """Per-item sums that add up across parts of a log (out-of-core preparation sums them over
    user buckets): events, positives, and the rating sum and count."""
    require_columns(events, [ITEM_IDX, LABEL], "item aggregates")
    return events.group_by(ITEM_IDX).agg(
        pl.len().cast(pl.Int64).alias("item_events"),
        pl.col(LABEL).cast(pl.Int64).sum().alias("item_positives"),
        pl.col(RATING).cast(pl.Float64).sum().alias("_rating_sum"),
        pl.col(RATING).count().cast(pl.Int64).alias("_rating_n"),
    )


def item_aggregates_from_partials(partials: pl.LazyFrame, n_items: int) -> pl.LazyFrame:
    """One row per item index in ``[0, n_items)``; items never seen get zero popularity."""
    stats = partials.group_by(ITEM_IDX).agg(
        pl.col("item_events", "item_positives", "_rating_sum", "_rating_n").sum()
    )
    all_items = pl.LazyFrame({ITEM_IDX: pl.int_range(0, n_items, eager=True, dtype=pl.Int64)})
    return (
        all_items.join(stats, on=ITEM_IDX, how="left")
        .with_columns(pl.col("item_events", "item_positives").fill_null(0))
        .with_columns(
            pl.when(pl.col("_rating_n") > 0)
            .then(pl.col("_rating_sum") / pl.col("_rating_n"))
            .cast(pl.Float32)
            .alias("item_mean_rating"),
            pl.col("item_events").log1p().cast(pl.Float32).alias("item_log_popularity"),
            # Smoothed towards the global rate so a one-event item is not "certain".
            ((pl.col("item_positives") + 1) / (pl.col("item_events") + 2))
            .cast(pl.Float32)
            .alias("item_pos_rate"),
        )
        .drop("_rating_sum", "_rating_n")
        .sort(ITEM_IDX)
    )


def item_aggregates(events: pl.LazyFrame, n_items: int) -> pl.LazyFrame:
    """One row per item index in ``[0, n_items)``; items never seen get zero popularity."""
    return item_aggregates_from_partials(item_partials(events), n_items)


def dense_matrix(frame: pl.DataFrame, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Dense features ``[n, len(names)]`` float32, nulls and NaNs as 0: the one conversion shared
    by training, export and the online feature store, so every side sees the same numbers."""
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"missing dense feature column(s) {missing}")
    values = frame.select(pl.col(list(names)).cast(pl.Float32).fill_null(0.0).fill_nan(0.0)).to_numpy(
        writable=True
    )
    return np.ascontiguousarray(values, dtype=np.float32)

"""Point-in-time user histories: the items a user liked *before* each example.

Using the whole training history as a feature would leak the label (the target item is in it);
an as-of join gives each example only what was known at its timestamp, and serving uses the same
code with "now" as the time, so offline and online features agree.
"""

from __future__ import annotations

import polars as pl

from rankforge.errors import DataError
from rankforge.features.event_order import event_order
from rankforge.features.schema import ITEM, ITEM_IDX, LABEL, TIMESTAMP, USER, USER_IDX, require_columns

HISTORY = "history"


def positive_sequences(events: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Positives numbered per user in event order (``features.event_order``), and each user's
    positive list in that order."""
    require_columns(events, [USER_IDX, ITEM_IDX, TIMESTAMP, LABEL, USER, ITEM], "user history")
    positives = (
        events.filter(pl.col(LABEL) > 0)
        .sort(event_order(USER_IDX))
        .with_columns((pl.int_range(pl.len()).over(USER_IDX) + 1).alias("_n_before"))
    )
    lists = positives.group_by(USER_IDX).agg(pl.col(ITEM_IDX).alias("_items"))
    return positives.select(USER_IDX, TIMESTAMP, "_n_before"), lists


def _slice_last(n_before: pl.Expr, max_len: int) -> pl.Expr:
    n_before = n_before.cast(pl.Int64)  # list lengths are unsigned: n - max_len must not wrap
    offset = (n_before - max_len).clip(lower_bound=0)
    length = n_before.clip(upper_bound=max_len)
    return pl.col("_items").list.slice(offset, length)


N_BEFORE = "n_before"


def with_positives_before(examples: pl.LazyFrame, events: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``n_before``: how many positives the user had strictly before each example. With the
    user's time-ordered positives (:func:`positive_sequences`), the point-in-time history is the
    ``n_before``-long prefix's tail; out-of-core examples store this count instead of the list."""
    require_columns(examples, [USER_IDX, TIMESTAMP], "history examples")
    numbered, _ = positive_sequences(events)
    cols = examples.collect_schema().names()
    joined = examples.sort(TIMESTAMP, maintain_order=True).join_asof(
        numbered.sort(TIMESTAMP),
        on=TIMESTAMP,
        by=USER_IDX,
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,  # sorted by time within each user above; Polars cannot verify with `by`
    )
    return joined.select(*cols, pl.col("_n_before").fill_null(0).cast(pl.Int32).alias(N_BEFORE))


def events_with_positives_before(events: pl.LazyFrame, ordered: bool = False) -> pl.LazyFrame:
    """Every event with ``n_before`` (as :func:`with_positives_before` gives an example), in
    event order (``features.event_order``), by running sums instead of an as-of join: in that order a user's
    positives before a row are the running count minus its value at the user's first row, and
    "strictly before" (ties on time) is that count at the first row of the row's (user, time)
    group. Group starts are carried forward with ``forward_fill``, so no group-by is needed.
    ``ordered``: ``events`` are already in that order (no sort: the sort is most of the cost;
    without it the frame must carry the raw ``user_id`` and ``item_id`` the order reads)."""
    require_columns(events, [USER_IDX, ITEM_IDX, TIMESTAMP, LABEL], "user history")
    if not ordered:
        events = events.sort(event_order(USER_IDX))
    positive = (pl.col(LABEL) > 0).cast(pl.Int64)
    new_user = (pl.col(USER_IDX) != pl.col(USER_IDX).shift(1)).fill_null(True)
    new_time = new_user | (pl.col(TIMESTAMP) != pl.col(TIMESTAMP).shift(1)).fill_null(True)
    before_row = pl.col("_running") - pl.when(new_user).then(pl.col("_running")).forward_fill()
    return (
        events.with_columns((positive.cum_sum() - positive).alias("_running"))
        .with_columns(pl.when(new_time).then(before_row).forward_fill().cast(pl.Int32).alias(N_BEFORE))
        .drop("_running")
    )


def latest_from_ordered(events: pl.LazyFrame, max_len: int) -> pl.LazyFrame:
    """:func:`latest_history` of events already in event order (no second sort):
    group-by aggregation keeps each group's rows in frame order."""
    return (
        events.filter(pl.col(LABEL) > 0).group_by(USER_IDX).agg(pl.col(ITEM_IDX).tail(max_len).alias(HISTORY))
    )


def with_point_in_time_history(examples: pl.LazyFrame, events: pl.LazyFrame, max_len: int) -> pl.LazyFrame:
    """Add ``history``: the user's last ``max_len`` positives strictly before each example."""
    if max_len < 1:
        raise DataError(f"history length must be >= 1, got {max_len}")
    _, lists = positive_sequences(events)
    cols = examples.collect_schema().names()
    joined = with_positives_before(examples, events).join(
        lists, on=USER_IDX, how="left", maintain_order="left"
    )
    history = _slice_last(pl.col(N_BEFORE), max_len).fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
    return joined.select(*cols, history.alias(HISTORY))


def latest_history(events: pl.LazyFrame, max_len: int) -> pl.LazyFrame:
    """Each user's last ``max_len`` positives: the history the online feature store serves."""
    if max_len < 1:
        raise DataError(f"history length must be >= 1, got {max_len}")
    _, lists = positive_sequences(events)
    return lists.select(USER_IDX, _slice_last(pl.col("_items").list.len(), max_len).alias(HISTORY))

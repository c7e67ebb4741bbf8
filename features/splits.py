"""Train/test splits that respect time, because recommenders are always asked about the future."""

from __future__ import annotations

import polars as pl

from rankforge.errors import DataError
from rankforge.features.event_order import event_order
from rankforge.features.schema import ITEM, TIMESTAMP, USER, require_columns


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {fraction}")


def global_time_split(
    log: pl.LazyFrame, test_fraction: float = 0.2, test_from: int | None = None
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Everything after the (1 - f) time quantile is test: no leakage of future events. With
    ``test_from`` the cut is that timestamp instead: events at or after it are test (a fixed
    calendar cut that several logs, e.g. of a previous and a new model, can share)."""
    require_columns(log, [TIMESTAMP], "global time split")
    if test_from is None:
        test_from = time_cut(log, test_fraction)
    return log.filter(pl.col(TIMESTAMP) < test_from), log.filter(pl.col(TIMESTAMP) >= test_from)


def time_cut(log: pl.LazyFrame, test_fraction: float) -> int:
    """The first timestamp of the last ``test_fraction`` of time: one past the (1 - f) quantile
    (lower interpolation), computed with the streaming engine (a log larger than memory is
    scanned, never collected)."""
    _check_fraction(test_fraction)
    cutoff = (
        log.select(pl.col(TIMESTAMP).quantile(1.0 - test_fraction, interpolation="lower"))
        .collect(engine="streaming")
        .item()
    )
    if cutoff is None:
        raise DataError("global time split: the log has no timestamps")
    return int(cutoff) + 1


def leave_last_out(
    log: pl.LazyFrame, n_last: int = 1, min_train: int = 1, ordered: bool = False
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Each user's last ``n_last`` events are test, if the user keeps at least ``min_train`` in train.

    "Last" is in the event order the histories use (``features.event_order``): time, then a
    seeded hash of (user, item) among events at the same time -- never the item id (ids follow
    catalogue age or popularity) nor where a row sits in the file, so a log split whole and the
    same log split in user buckets hold out the same events. Both parts come out in that order;
    ``ordered``: ``log`` already is (no sort here).
    """
    if n_last < 1 or min_train < 1:
        raise DataError("leave_last_out: n_last and min_train must be >= 1")
    require_columns(log, [USER, ITEM, TIMESTAMP], "leave-last-out split")
    if not ordered:
        log = log.sort(event_order())
    # in event order a row is among its user's last n iff n rows later is another user
    among_last = (pl.col(USER) != pl.col(USER).shift(-n_last)).fill_null(True)
    is_test = among_last & (pl.len().over(USER) - n_last >= min_train)
    return log.filter(~is_test), log.filter(is_test)


def random_leave_out(
    log: pl.LazyFrame, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Per-user random hold-out, for logs without meaningful time (e.g. LightGCN lists)."""
    _check_fraction(test_fraction)
    require_columns(log, [USER, ITEM], "random leave-out split")
    keyed = log.with_columns(
        (pl.struct(USER, ITEM).hash(seed) % 1_000_000 < int(test_fraction * 1_000_000)).alias("_test")
    )
    return keyed.filter(~pl.col("_test")).drop("_test"), keyed.filter(pl.col("_test")).drop("_test")

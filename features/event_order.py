"""The order of a user's events: by time, and among events at the same time by a seeded hash.

Leave-last-out holds out a user's *last* events, and the user histories keep the *latest*
positives, so both need a total order of one user's events. Time gives most of it, but real logs
are full of ties (MovieLens users rate dozens of titles in the same second). A tie broken by item
id holds out whatever the id assignment favours -- in most logs ids follow catalogue age or
popularity (on MovieLens-100K the largest id among a user's last-second ties has 123 ratings on
average, a random one among the same ties 146) -- and a tie broken by row position depends on how
the file was written. So ties are broken by a seeded hash of the raw ``(user, item)`` pair: the
choice is as good as random with respect to ids, popularity and file order, and the same for a
whole log, a user bucket out of core or a Ray worker.

The hash is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014) in NumPy's wrapping unsigned arithmetic, not Polars' own ``hash``, whose
values may change between Polars releases: a split must not move when a library is upgraded.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from rankforge.features.schema import ITEM, TIMESTAMP, USER

#: The seed of the tie-break: part of every split's definition (changing it moves held-out events).
TIE_SEED = 0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (products wrap modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _tie(columns: list[pl.Series], seed: int) -> pl.Series:
    user, item = (c.cast(pl.Int64).to_numpy().view(np.uint64) for c in columns)
    with np.errstate(over="ignore"):
        return pl.Series(_mix(_mix(user + _GOLDEN * np.uint64(seed + 1)) ^ item), dtype=pl.UInt64)


def tie_key(user: str = USER, item: str = ITEM, seed: int = TIE_SEED) -> pl.Expr:
    """A UInt64 expression: the seeded hash of each row's raw ``(user, item)`` ids (64-bit
    integers; string ids are already stable integers, see ``features.string_ids``)."""
    return pl.map_batches(
        [pl.col(user), pl.col(item)],
        lambda columns: _tie(columns, seed),
        return_dtype=pl.UInt64,
        is_elementwise=True,
    )


def event_order(user: str = USER) -> list[pl.Expr]:
    """Sort keys of the event order: ``user`` (raw ``user_id`` or its ``user_idx``: indices
    follow raw-id order), time, then the tie key of the raw ids (the frame must carry
    ``user_id`` and ``item_id``)."""
    return [pl.col(user), pl.col(TIMESTAMP), tie_key()]

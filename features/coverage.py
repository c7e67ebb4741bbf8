"""Which held-out events a split's metrics score, and why the others are not: never silent.

A held-out event (test, or validation carved from training) is scored only when the model can
score it:

* its **user** has an event in the known part of the log (the training part, the carved
  validation events included: the id mapping's users): a user first seen after the cut has no
  embedding and no history, so it is dropped and counted as a *cold user* (a time split leaves
  many; see the README's "What a time split means for serving");
* its **item** is in the catalogue: the known part's items plus the item table. Another item has
  no embedding and no features, so the event is dropped and counted as an *unknown item*.

Ranking metrics (AUC, LogLoss, ...) score the remaining events. Retrieval metrics average over
the remaining users with at least one held-out positive; the others are counted as *users without
a held-out positive*. The counts are computed once when the data is prepared (``prepare`` and the
out-of-core path agree), reported by ``rankforge train`` and ``rankforge evaluate`` and logged to
MLflow, so two models' numbers are comparable only when their coverage is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import polars as pl

from rankforge.features.id_mapping import IdMapping
from rankforge.features.schema import ITEM, RATING, USER


@dataclass(frozen=True)
class Coverage:
    """Counts over one held-out split. ``events``/``users``: what the split holds;
    ``cold_user_*`` and ``unknown_item_events``: dropped (an event of a cold user is counted
    there only); ``scored_*``: what ranking metrics score; ``positive_users``: the scored users
    with a held-out positive, what retrieval metrics average over."""

    events: int = 0
    users: int = 0
    cold_user_events: int = 0
    cold_users: int = 0
    unknown_item_events: int = 0
    scored_events: int = 0
    scored_users: int = 0
    positive_users: int = 0

    def __add__(self, other: Coverage) -> Coverage:
        """Counts of two disjoint user sets (the out-of-core path's user buckets)."""
        return Coverage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def users_without_positive(self) -> int:
        return self.scored_users - self.positive_users

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, int]) -> Coverage:
        return cls(**{f.name: int(raw.get(f.name, 0)) for f in fields(cls)})

    def metrics(self, split: str) -> dict[str, float]:
        """MLflow metrics: ``{split}_coverage_{count}``."""
        counts = {**self.to_dict(), "users_without_positive": self.users_without_positive}
        return {f"{split}_coverage_{name}": float(value) for name, value in counts.items()}

    def describe(self, retrieval: bool) -> str:
        """One line: what was scored, then what was dropped and why."""
        scored = (
            f"{self.positive_users:,} of {self.users:,} users scored (with a held-out positive)"
            if retrieval
            else f"{self.scored_events:,} of {self.events:,} events scored ({self.scored_users:,} users)"
        )
        dropped = [
            f"{self.cold_users:,} cold users ({self.cold_user_events:,} events)" if self.cold_users else "",
            f"{self.unknown_item_events:,} events on unknown items" if self.unknown_item_events else "",
            f"{self.users_without_positive:,} users without a held-out positive"
            if retrieval and self.users_without_positive
            else "",
        ]
        reasons = [d for d in dropped if d]
        return scored + ("; not scored: " + ", ".join(reasons) if reasons else "; nothing dropped")


def held_out_coverage(raw: pl.LazyFrame, mapping: IdMapping, threshold: float) -> Coverage:
    """The coverage of held-out events in raw ids (``user_id``, ``item_id``, ``rating``; a null
    rating is an implicit positive) under ``mapping``, the known part's ids."""
    events = (
        raw.select(USER, ITEM, RATING)
        .with_columns(
            mapping.user_index().is_not_null().alias("_known_user"),
            mapping.item_index().is_not_null().alias("_known_item"),
            (pl.col(RATING).is_null() | (pl.col(RATING) >= threshold)).alias("_positive"),
        )
        .with_columns((pl.col("_known_user") & pl.col("_known_item")).alias("_scored"))
    )
    counts = events.select(
        pl.len().alias("events"),
        pl.col(USER).n_unique().alias("users"),
        (~pl.col("_known_user")).sum().alias("cold_user_events"),
        pl.col(USER).filter(~pl.col("_known_user")).n_unique().alias("cold_users"),
        (pl.col("_known_user") & ~pl.col("_known_item")).sum().alias("unknown_item_events"),
        pl.col("_scored").sum().alias("scored_events"),
        pl.col(USER).filter(pl.col("_scored")).n_unique().alias("scored_users"),
        pl.col(USER).filter(pl.col("_scored") & pl.col("_positive")).n_unique().alias("positive_users"),
    ).collect()
    return Coverage(**{name: int(counts[name].item() or 0) for name in counts.columns})

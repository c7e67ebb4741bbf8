"""A small deterministic interaction log with learnable structure, for tests and the demo job.

Users and items get latent vectors drawn around a few "taste" clusters; a user interacts with
items sampled by softmax affinity and rates them by affinity. A model that learns anything beats
popularity on it, which is what tests of training need, and the same seed always gives the same log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.feature_spec import Feature
from rankforge.features.schema import INTERACTION_SCHEMA, ITEM, RATING, TIMESTAMP, USER


@dataclass(frozen=True)
class SyntheticLog:
    interactions: pl.DataFrame
    items: pl.DataFrame  # item_id, genres (list[str])


@dataclass(frozen=True)
class SyntheticWorld:
    """The hidden truth behind a synthetic log: who likes what. Raw ids are ``index + 1``."""

    affinity: np.ndarray  # [n_users, n_items]: user-item taste plus item popularity
    item_cluster: np.ndarray  # [n_items]


def _world(rng: np.random.Generator, n_users: int, n_items: int, n_clusters: int) -> SyntheticWorld:
    dim = 8
    centers = rng.normal(size=(n_clusters, dim)) * 2.0
    user_cluster = rng.integers(n_clusters, size=n_users)
    item_cluster = rng.integers(n_clusters, size=n_items)
    users = centers[user_cluster] + rng.normal(size=(n_users, dim))
    items = centers[item_cluster] + rng.normal(size=(n_items, dim))
    popularity = rng.normal(size=n_items)
    return SyntheticWorld(users @ items.T / np.sqrt(dim) + popularity, item_cluster)


def synthetic_world(
    n_users: int = 300, n_items: int = 400, n_clusters: int = 6, seed: int = 0
) -> SyntheticWorld:
    """The world ``generate_log`` with the same arguments draws its log from (same seed, same
    latents), so other logs of the same users and items (e.g. ad auctions) can be simulated."""
    if n_users < 1 or n_items < 2 or n_clusters < 1:
        raise DataError("synthetic_world: need n_users >= 1, n_items >= 2 and n_clusters >= 1")
    return _world(np.random.default_rng(seed), n_users, n_items, n_clusters)


def generate_log(
    n_users: int = 300,
    n_items: int = 400,
    n_clusters: int = 6,
    min_events: int = 10,
    max_events: int = 40,
    seed: int = 0,
) -> SyntheticLog:
    """Generate users x items interactions with ratings 1..5, timestamps and item genres."""
    if n_users < 1 or n_items < 2 or n_clusters < 1:
        raise DataError("generate_log: need n_users >= 1, n_items >= 2 and n_clusters >= 1")
    if not 1 <= min_events <= max_events <= n_items:
        raise DataError("generate_log: need 1 <= min_events <= max_events <= n_items")
    rng = np.random.default_rng(seed)
    world = _world(rng, n_users, n_items, n_clusters)
    affinity, item_cluster = world.affinity, world.item_cluster

    rows_u, rows_i, rows_r, rows_t = [], [], [], []
    clock = 1_600_000_000
    n_events = rng.integers(min_events, max_events + 1, size=n_users)
    for u in range(n_users):
        logits = affinity[u] - affinity[u].max()
        p = np.exp(logits)
        p /= p.sum()
        # Weighted sampling without replacement draws the favourites first: shuffle, or time
        # would order events by affinity and every held-out (last) event would be a dislike.
        chosen = rng.permutation(rng.choice(n_items, size=n_events[u], replace=False, p=p))
        score = affinity[u, chosen]
        # Ratings relative to the user's own choices: about half of them are positives (>= 4).
        rating = np.clip(np.round(3.5 + (score - score.mean()) / (score.std() + 1e-9)), 1, 5)
        times = clock + np.sort(rng.integers(0, 90 * 86_400, size=n_events[u]))
        rows_u.append(np.full(n_events[u], u + 1))
        rows_i.append(chosen + 1)
        rows_r.append(rating)
        rows_t.append(times)
    interactions = pl.DataFrame(
        {
            USER: np.concatenate(rows_u),
            ITEM: np.concatenate(rows_i),
            RATING: np.concatenate(rows_r),
            TIMESTAMP: np.concatenate(rows_t),
        },
        schema=INTERACTION_SCHEMA,
    ).sort(TIMESTAMP, USER, ITEM)
    genre_names = [f"genre_{c}" for c in range(n_clusters)]
    second = rng.integers(n_clusters, size=n_items)
    genres = [
        sorted({genre_names[item_cluster[i]], genre_names[second[i]]})
        if rng.random() < 0.3
        else [genre_names[item_cluster[i]]]
        for i in range(n_items)
    ]
    item_frame = pl.DataFrame(
        {ITEM: np.arange(1, n_items + 1, dtype=np.int64), "genres": genres},
        schema={ITEM: pl.Int64, "genres": pl.List(pl.String)},
    )
    return SyntheticLog(interactions=interactions, items=item_frame)


#: The synthetic catalogue's genres as a declared feature (what the example configs declare under
#: ``[[data.features]]``): one multi-valued categorical item feature.
GENRES_FEATURE = Feature(
    name="item_genres", side="item", kind="multi_categorical", column="genres", max_len=8
)

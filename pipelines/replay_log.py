"""A logged-bandit replay log built from held-out events, and model policies over its slates.

Real impression logs with propensities are the input the estimators expect; when only an
interaction log exists, the standard construction is a *uniform logging policy* over a slate:
each held-out positive is shown among ``slate_size - 1`` sampled items the user never touched,
one slate item is "shown" uniformly at random (propensity 1/slate_size) and the reward is 1 when
it is the held-out item. Under uniform logging the replay estimator is unbiased (Li et al. 2011),
and the same log is reused for champion and challenger so their estimates are paired.

Stored as parquet: ``user_id``, ``slate`` (list of raw item ids), ``action`` (shown item id),
``propensity``, ``reward``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.evaluation.replay import ReplayLog, replay_log_from_frame
from rankforge.features.pipeline import PreparedData

COLUMNS = {
    "user_id": pl.Int64,
    "slate": pl.List(pl.Int64),
    "action": pl.Int64,
    "propensity": pl.Float64,
    "reward": pl.Float64,
}


def build_replay_log(data: PreparedData, slate_size: int = 10, seed: int = 0) -> pl.DataFrame:
    """One uniformly-logged slate per held-out positive (deterministic for a seed)."""
    if slate_size < 2:
        raise DataError(f"slate_size must be >= 2, got {slate_size}")
    test = data.test_positives().select("user_idx", "item_idx", "user_id")
    if test.height == 0:
        raise DataError("no held-out positives to build a replay log from")
    n_items = data.n_items
    if slate_size > n_items:
        raise DataError(f"slate_size {slate_size} exceeds the {n_items} items")
    rng = np.random.default_rng(seed)
    train = data.train_events
    seen = np.unique(train["user_idx"].to_numpy() * n_items + train["item_idx"].to_numpy())
    users, positives = test["user_idx"].to_numpy(), test["item_idx"].to_numpy()
    slates = np.empty((test.height, slate_size), dtype=np.int64)
    slates[:, 0] = positives
    # rejection sampling of items the user never touched, all rows at once, a few rounds at most
    filler = rng.integers(0, n_items, size=(test.height, slate_size - 1))
    for _ in range(100):
        bad = (
            np.isin(users[:, None] * n_items + filler, seen)
            | (filler == positives[:, None])
            | _duplicates(filler)
        )
        if not bad.any():
            break
        filler[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    else:
        raise DataError("could not sample slates of unseen items: slate_size too large for this catalogue")
    slates[:, 1:] = filler
    slates = np.take_along_axis(
        slates, rng.permuted(np.tile(np.arange(slate_size), (test.height, 1)), axis=1), 1
    )
    shown = slates[np.arange(test.height), rng.integers(0, slate_size, size=test.height)]
    raw = data.mapping.items.sort("item_idx")["item_id"].to_numpy()
    return pl.DataFrame(
        {
            "user_id": test["user_id"],
            "slate": [row.tolist() for row in raw[slates]],
            "action": raw[shown],
            "propensity": np.full(test.height, 1.0 / slate_size),
            "reward": (shown == positives).astype(np.float64),
        },
        schema=COLUMNS,
    )


def _duplicates(rows: np.ndarray) -> np.ndarray:
    """True where an entry repeats an earlier one in its row."""
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(rows, order, 1)
    repeat = np.zeros_like(rows, dtype=bool)
    repeat_sorted = np.c_[np.zeros(len(rows), dtype=bool), sorted_rows[:, 1:] == sorted_rows[:, :-1]]
    np.put_along_axis(repeat, order, repeat_sorted, 1)
    return repeat


def write_replay_log(frame: pl.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    validate_replay_frame(frame, str(path)).write_parquet(path)
    return path


def validate_replay_frame(frame: pl.DataFrame, origin: str = "replay log") -> pl.DataFrame:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing}; found {frame.columns}")
    frame = frame.select(pl.col(name).cast(dtype) for name, dtype in COLUMNS.items())
    bad_action = frame.filter(~pl.col("slate").list.contains(pl.col("action"))).height
    if bad_action:
        raise DataError(f"{origin}: {bad_action} row(s) whose shown action is not in its slate")
    replay_log_from_frame(frame)  # propensities, rewards, nulls
    return frame


def read_replay_log(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"replay log not found: {path}")
    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataError(f"cannot read replay log {path}: {exc}") from exc
    return validate_replay_frame(frame, str(path))


def as_log(frame: pl.DataFrame) -> ReplayLog:
    return replay_log_from_frame(frame)


def policy_probabilities(
    slate_scores: np.ndarray, action_index: np.ndarray, temperature: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(π(· | slate) for every slate item, π(logged action | slate)) for a model's slate scores.

    ``temperature == 0``: the greedy policy (ties share the probability); otherwise a softmax over
    scores / temperature.
    """
    scores = np.asarray(slate_scores, dtype=np.float64)
    if temperature < 0:
        raise DataError("temperature must be >= 0")
    if temperature == 0:
        best = scores == scores.max(axis=1, keepdims=True)
        probs = best / best.sum(axis=1, keepdims=True)
    else:
        z = scores / temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
    return probs, probs[np.arange(len(scores)), action_index]


def greedy_actions(slates: np.ndarray, slate_scores: np.ndarray) -> np.ndarray:
    """The item a greedy policy shows on each slate (first of ties)."""
    return slates[np.arange(len(slates)), np.argmax(slate_scores, axis=1)]

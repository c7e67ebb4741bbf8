"""Bootstrap confidence intervals, and paired ones for champion-vs-challenger differences.

Percentile bootstrap: draw ``n_resamples`` resamples of the n rows with replacement (one seeded
numpy Generator, so a seed always gives the same interval), evaluate the statistic on each, and
report the (α/2, 1 − α/2) quantiles around the statistic on the full data.

Pairing matters: both models are scored on the *same* resampled users/events, so the shared
difficulty of a resample cancels out and the interval of the difference is much tighter than two
independent intervals would suggest.

Resample indices are drawn in blocks of at most ``MAX_BLOCK`` integers, so memory stays bounded
for large logs; the blocks consume the generator's stream in order, so results do not depend on
the block size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]  # row indices of a resample -> value
MAX_BLOCK = 1 << 24  # resample indices held at once (128 MiB of int64)


@dataclass(frozen=True)
class Interval:
    """Point estimate on the full data and the percentile interval [low, high]."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _resamples(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resample row indices, shape [block, n], n_resamples rows in all."""
    if n < 1:
        raise ValueError("bootstrap needs at least one observation")
    if n_resamples < 10:
        raise ValueError("n_resamples must be >= 10")
    rng = np.random.default_rng(seed)
    per_block = max(1, MAX_BLOCK // n)
    for start in range(0, n_resamples, per_block):
        yield rng.integers(0, n, size=(min(per_block, n_resamples - start), n))


def _interval(estimate: float, samples: np.ndarray, confidence: float) -> Interval:
    """Percentile interval; resamples where the statistic is undefined (NaN, e.g. replay with no
    matched event) are left out, and the bounds are NaN if it is undefined on every resample."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if np.isnan(samples).all():
        return Interval(float(estimate), float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(samples, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high))


def _values(values: np.ndarray | list[float], name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return v


def bootstrap_mean(
    values: np.ndarray | list[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of a mean (e.g. of per-user Recall@K), resampled as whole arrays."""
    v = _values(values, "values")
    samples = np.concatenate([v[idx].mean(axis=1) for idx in _resamples(v.size, n_resamples, seed)])
    return _interval(v.mean(), samples, confidence)


def bootstrap(
    statistic: Statistic, n: int, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of any statistic of ``n`` rows (e.g. SNIPS, AUC).

    ``statistic(rows)`` receives the row indices of one resample (with repeats) and returns a
    float; it is called once per resample, so it should be vectorised over the rows itself.
    """
    samples = np.array([statistic(rows) for idx in _resamples(n, n_resamples, seed) for rows in idx])
    return _interval(statistic(np.arange(n)), samples, confidence)


def paired_bootstrap_difference(
    challenger: Statistic,
    champion: Statistic,
    n: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of challenger − champion, both evaluated on each same resample of the ``n`` rows."""
    samples = np.array(
        [challenger(rows) - champion(rows) for idx in _resamples(n, n_resamples, seed) for rows in idx]
    )
    every = np.arange(n)
    return _interval(challenger(every) - champion(every), samples, confidence)


def paired_bootstrap_mean_difference(
    challenger_values: np.ndarray | list[float],
    champion_values: np.ndarray | list[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of mean(challenger) − mean(champion) over paired per-row values (same users/events).

    The mean of differences equals the difference of means, so this is the bootstrap of the mean
    of ``challenger_values − champion_values``, fully vectorised; it gives the same interval as
    :func:`paired_bootstrap_difference` with mean statistics and the same seed.
    """
    new = _values(challenger_values, "challenger_values")
    old = _values(champion_values, "champion_values")
    if new.shape != old.shape:
        raise ValueError(f"paired values differ in length: {new.size} vs {old.size}")
    return bootstrap_mean(new - old, n_resamples, confidence, seed)

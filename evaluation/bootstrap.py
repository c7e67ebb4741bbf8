"""Bootstrap confidence intervals, and paired ones for champion-vs-challenger differences.

Pairing matters: both models are scored on the *same* resampled users/events, so the shared
difficulty of a resample cancels out and the interval of the difference is much tighter than two
independent intervals would suggest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]  # row indices of a resample -> value


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("bootstrap needs at least one observation")
    if n_resamples < 10:
        raise ValueError("n_resamples must be >= 10")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(estimate: float, samples: np.ndarray, confidence: float) -> Interval:
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(samples, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_mean(
    values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of a mean, all resamples at once."""
    v = np.asarray(values, dtype=np.float64)
    idx = _indices(len(v), n_resamples, seed)
    return _interval(v.mean(), v[idx].mean(axis=1), confidence)


def bootstrap(
    statistic: Statistic, n: int, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of any statistic of ``n`` rows (e.g. SNIPS, AUC)."""
    idx = _indices(n, n_resamples, seed)
    samples = np.array([statistic(rows) for rows in idx])
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
    idx = _indices(n, n_resamples, seed)
    samples = np.array([challenger(rows) - champion(rows) for rows in idx])
    every = np.arange(n)
    return _interval(challenger(every) - champion(every), samples, confidence)

"""Comparison plots saved as PNG artifacts: ROC, reliability (calibration) and metric-at-K curves.

One figure per question, every model on the same axes, so a reviewer of an A/B run sees the
difference at a glance in the MLflow UI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: jobs run without a display
import matplotlib.pyplot as plt
import numpy as np

from rankforge.evaluation.metrics import auc, calibration_bins

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]  # model -> (labels, scores or probabilities)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, ties grouped.

    Tied scores move the curve diagonally in one step, so the trapezoidal area under these points
    is exactly :func:`~rankforge.evaluation.metrics.auc` (ties counted one half).
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(curves: Curves, path: str | Path) -> Path:
    """ROC curves of every model (labels, scores or logits) on one plot, AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        fpr, tpr = roc_points(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_calibration(curves: Curves, path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability per
    equal-width bin (the bins of the ECE; empty bins skipped). ``curves``: probabilities in [0, 1]."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, probs) in curves.items():
        mean_p, mean_y, count = calibration_bins(labels, probs, n_bins)
        seen = count > 0
        ax.plot(mean_p[seen], mean_y[seen], marker="o", label=name)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed positive rate", title="Calibration")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_metric_at_k(values: Mapping[str, Mapping[int, float]], metric: str, path: str | Path) -> Path:
    """``values[model][k]`` (e.g. recall@k): one line per model over the cutoffs."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_k in values.items():
        ks = sorted(by_k)
        ax.plot(ks, [by_k[k] for k in ks], marker="o", label=name)
    ax.set(xlabel="K", ylabel=f"{metric}@K", title=f"{metric}@K")
    ax.legend()
    return _save(fig, path)

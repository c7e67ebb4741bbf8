from pathlib import Path

import numpy as np
import pytest

from rankforge.evaluation.metrics import auc, calibration_bins
from rankforge.evaluation.plots import plot_calibration, plot_metric_at_k, plot_roc, roc_points


def test_roc_points_area_equals_auc_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200).astype(float)
    fpr, tpr = roc_points(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert abs(np.trapezoid(tpr, fpr) - auc(y, s)) < 1e-12


def test_plots_write_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(float)
    curves = {"champion": (y, p), "challenger": (y, np.clip(p + 0.1, 0, 1))}
    paths = [
        plot_roc(curves, tmp_path / "nested" / "dir" / "roc.png"),
        plot_calibration(curves, tmp_path / "calibration.png"),
        plot_metric_at_k(
            {"champion": {5: 0.1, 10: 0.2}, "challenger": {5: 0.2, 10: 0.3}}, "recall", tmp_path / "r.png"
        ),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert paths[0] == tmp_path / "nested" / "dir" / "roc.png"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_calibration({"logits": (y, p * 10 - 5)}, tmp_path / "bad.png")


def test_calibration_bins_match_a_loop() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 0.5, size=200)  # the upper bins stay empty
    y = (rng.uniform(size=200) < p).astype(float)
    mean_p, mean_y, count = calibration_bins(y, p, n_bins=4)
    for b in range(4):
        in_bin = (p >= b / 4) & (p < (b + 1) / 4)
        assert count[b] == in_bin.sum()
        if in_bin.any():
            assert mean_p[b] == pytest.approx(p[in_bin].mean())
            assert mean_y[b] == pytest.approx(y[in_bin].mean())
        else:
            assert np.isnan(mean_p[b]) and np.isnan(mean_y[b])
    assert count[2:].sum() == 0

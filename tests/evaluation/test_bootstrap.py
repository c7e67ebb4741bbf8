import numpy as np
import pytest

from rankforge.evaluation import bootstrap as bootstrap_module
from rankforge.evaluation.bootstrap import (
    bootstrap,
    bootstrap_mean,
    paired_bootstrap_difference,
    paired_bootstrap_mean_difference,
)


def test_bootstrap_covers_the_truth_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(loc=2.0, size=500)
    a = bootstrap_mean(values, n_resamples=500, seed=7)
    assert a == bootstrap_mean(values, n_resamples=500, seed=7)
    assert a != bootstrap_mean(values, n_resamples=500, seed=8)
    assert a.low < 2.0 < a.high and a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(values.mean())
    # the width is about that of the normal interval ±1.96 σ/√n
    assert a.high - a.low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(500), rel=0.15)
    generic = bootstrap(lambda rows: float(values[rows].mean()), len(values), n_resamples=500, seed=7)
    assert generic.low == pytest.approx(a.low) and generic.high == pytest.approx(a.high)


def test_coverage_is_close_to_the_nominal_level() -> None:
    rng = np.random.default_rng(11)
    # 200 independent samples from Exp(1) (mean 1), one 90% interval each
    hits = 0
    for s in range(200):
        iv = bootstrap_mean(rng.exponential(size=200), n_resamples=200, confidence=0.9, seed=s)
        hits += iv.low < 1.0 < iv.high
    assert 0.82 <= hits / 200 <= 0.96


def test_results_do_not_depend_on_the_resample_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(5).normal(size=300)
    whole = bootstrap_mean(values, n_resamples=50, seed=2)
    monkeypatch.setattr(bootstrap_module, "MAX_BLOCK", 300 * 7)  # 7 resamples per block
    assert bootstrap_mean(values, n_resamples=50, seed=2) == whole


def test_paired_difference_detects_a_small_shift_that_unpaired_noise_hides() -> None:
    rng = np.random.default_rng(4)
    difficulty = rng.normal(scale=5.0, size=400)  # shared per-user difficulty
    champion = difficulty + rng.normal(scale=0.1, size=400)
    challenger = difficulty + 0.1 + rng.normal(scale=0.1, size=400)
    diff = paired_bootstrap_difference(
        lambda r: float(challenger[r].mean()), lambda r: float(champion[r].mean()), 400, n_resamples=500
    )
    assert diff.excludes_zero() and diff.low > 0
    assert diff.low < 0.1 < diff.high
    # unpaired intervals of each model overlap widely: the pairing is what resolves the shift
    old, new = bootstrap_mean(champion, seed=1), bootstrap_mean(challenger, seed=2)
    assert new.low < old.high
    vectorised = paired_bootstrap_mean_difference(challenger, champion, n_resamples=500)
    assert vectorised.estimate == pytest.approx(diff.estimate)
    assert vectorised.low == pytest.approx(diff.low) and vectorised.high == pytest.approx(diff.high)
    same = paired_bootstrap_difference(
        lambda r: float(champion[r].mean()), lambda r: float(champion[r].mean()), 400, n_resamples=200
    )
    assert same.estimate == 0.0 and not same.excludes_zero()


def test_undefined_statistics_and_bad_arguments() -> None:
    nan_everywhere = bootstrap(lambda rows: float("nan"), 10, n_resamples=20)
    assert np.isnan(nan_everywhere.low) and np.isnan(nan_everywhere.high)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean([1.0, 2.0], n_resamples=5)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([1.0, np.nan])
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_mean_difference([1.0, 2.0], [1.0])

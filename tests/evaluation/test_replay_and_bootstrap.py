import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.evaluation.bootstrap import bootstrap, bootstrap_mean, paired_bootstrap_difference
from rankforge.evaluation.replay import (
    ReplayLog,
    dr_value,
    ips_value,
    replay_log_from_frame,
    replay_value,
    snips_value,
)

ARMS = np.array([0.1, 0.3, 0.5, 0.2, 0.7])  # true reward probability of each arm


def logged_bandit(n: int, seed: int) -> ReplayLog:
    """Uniform logging over 5 arms with Bernoulli rewards of known means."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, len(ARMS), n)
    rewards = (rng.uniform(size=n) < ARMS[actions]).astype(float)
    return ReplayLog(actions, np.full(n, 1 / len(ARMS)), rewards)


def target_policy() -> np.ndarray:
    """A stochastic target: mostly the best arm."""
    return np.array([0.05, 0.05, 0.1, 0.0, 0.8])


def test_estimators_recover_the_true_value_of_the_target_policy() -> None:
    log = logged_bandit(40_000, seed=0)
    pi = target_policy()
    truth = float(pi @ ARMS)
    probs = pi[log.actions]
    assert ips_value(log, probs) == pytest.approx(truth, abs=0.02)
    assert snips_value(log, probs) == pytest.approx(truth, abs=0.02)
    # DR with a biased reward model is still unbiased (the propensities are right)
    r_hat = np.full(len(ARMS), 0.4)
    assert dr_value(log, probs, r_hat[log.actions], np.full(len(log), pi @ r_hat)) == pytest.approx(
        truth, abs=0.02
    )
    # replay of a deterministic policy that always picks arm 4 estimates that arm's mean
    value, matched = replay_value(log, np.full(len(log), 4))
    assert matched == int((log.actions == 4).sum())
    assert value == pytest.approx(ARMS[4], abs=0.02)


def test_exact_small_case() -> None:
    log = ReplayLog(np.array([0, 1, 1, 2]), np.array([0.5, 0.25, 0.25, 0.5]), np.array([1.0, 0.0, 1.0, 1.0]))
    probs = np.array([1.0, 0.0, 0.5, 0.5])
    # IPS: (1*1/0.5 + 0 + 1*0.5/0.25 + 1*0.5/0.5) / 4 = (2 + 2 + 1) / 4
    assert ips_value(log, probs) == pytest.approx(5 / 4)
    assert snips_value(log, probs) == pytest.approx(5 / (2 + 0 + 2 + 1))
    assert replay_value(log, np.array([0, 1, 0, 0])) == (0.5, 2)  # events 0 (r=1) and 1 (r=0) match
    # IPS of the logging policy itself is the mean logged reward
    assert ips_value(log, log.propensities) == pytest.approx(log.rewards.mean())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensities": np.array([0.0, 0.5])}, "propensities"),
        ({"propensities": np.array([0.5, 1.5])}, "propensities"),
        ({"rewards": np.array([1.0, np.nan])}, "NaN"),
        ({"rewards": np.array([1.0])}, "differ in length"),
    ],
)
def test_bad_logs_are_rejected(kwargs: dict, message: str) -> None:
    base = {
        "actions": np.array([0, 1]),
        "propensities": np.array([0.5, 0.5]),
        "rewards": np.array([1.0, 0.0]),
    }
    with pytest.raises(DataError, match=message):
        ReplayLog(**{**base, **kwargs})
    with pytest.raises(DataError, match="empty"):
        ReplayLog(np.array([]), np.array([]), np.array([]))


def test_frame_validation_and_target_checks() -> None:
    frame = pl.DataFrame({"action": [1, 2], "propensity": [0.5, 0.5], "reward": [0, 1]})
    log = replay_log_from_frame(frame)
    assert log.rewards.tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match=r"missing column\(s\) \['reward'\]"):
        replay_log_from_frame(frame.drop("reward"))
    with pytest.raises(DataError, match="one value per logged event"):
        ips_value(log, np.array([1.0]))
    with pytest.raises(DataError, match="both reward_hat_logged and expected_reward_hat"):
        from rankforge.evaluation.replay import per_event_terms

        per_event_terms(log, np.array([1.0, 1.0]), reward_hat_logged=np.zeros(2))


def test_bootstrap_covers_the_truth_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(loc=2.0, size=500)
    a = bootstrap_mean(values, n_resamples=500, seed=7)
    assert a == bootstrap_mean(values, n_resamples=500, seed=7)
    assert a.low < 2.0 < a.high and a.low < a.estimate < a.high
    generic = bootstrap(lambda rows: float(values[rows].mean()), len(values), n_resamples=500, seed=7)
    assert generic.low == pytest.approx(a.low) and generic.high == pytest.approx(a.high)


def test_paired_difference_detects_a_small_shift_that_unpaired_noise_hides() -> None:
    rng = np.random.default_rng(4)
    difficulty = rng.normal(scale=5.0, size=400)  # shared per-user difficulty
    champion = difficulty + rng.normal(scale=0.1, size=400)
    challenger = difficulty + 0.1 + rng.normal(scale=0.1, size=400)
    diff = paired_bootstrap_difference(
        lambda r: float(challenger[r].mean()), lambda r: float(champion[r].mean()), 400, n_resamples=500
    )
    assert diff.excludes_zero() and diff.low > 0
    same = paired_bootstrap_difference(
        lambda r: float(champion[r].mean()), lambda r: float(champion[r].mean()), 400, n_resamples=200
    )
    assert same.estimate == 0.0 and not same.excludes_zero()

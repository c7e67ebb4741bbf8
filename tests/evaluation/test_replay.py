import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.evaluation.bootstrap import bootstrap_mean
from rankforge.evaluation.replay import (
    ReplayLog,
    dr_value,
    ips_value,
    per_event_terms,
    replay_log_from_frame,
    replay_value,
    snips_value,
)

ARMS = np.array([0.1, 0.3, 0.5, 0.2, 0.7])  # true reward probability of each arm
TARGET = np.array([0.05, 0.05, 0.1, 0.0, 0.8])  # a stochastic target: mostly the best arm
TRUTH = float(TARGET @ ARMS)


def logged_bandit(n: int, seed: int, logging: np.ndarray | None = None) -> ReplayLog:
    """Logging policy over 5 arms (uniform unless given) with Bernoulli rewards of known means."""
    mu = np.full(len(ARMS), 1 / len(ARMS)) if logging is None else logging
    rng = np.random.default_rng(seed)
    actions = rng.choice(len(ARMS), size=n, p=mu)
    rewards = (rng.uniform(size=n) < ARMS[actions]).astype(float)
    return ReplayLog(actions, mu[actions], rewards)


def test_estimators_recover_the_true_value_of_the_target_policy() -> None:
    log = logged_bandit(40_000, seed=0)
    probs = TARGET[log.actions]
    assert ips_value(log, probs) == pytest.approx(TRUTH, abs=0.02)
    assert snips_value(log, probs) == pytest.approx(TRUTH, abs=0.02)
    # DR with a biased reward model is still unbiased (the propensities are right)
    r_hat = np.full(len(ARMS), 0.4)
    dr = dr_value(log, probs, r_hat[log.actions], np.full(len(log), TARGET @ r_hat))
    assert dr == pytest.approx(TRUTH, abs=0.02)
    # the reward model alone (direct method) would be far off: DR's correction is doing the work
    assert abs(TARGET @ r_hat - TRUTH) > 0.15
    # replay of a deterministic policy that always picks arm 4 estimates that arm's mean
    value, matched = replay_value(log, np.full(len(log), 4))
    assert matched == int((log.actions == 4).sum())
    assert value == pytest.approx(ARMS[4], abs=0.02)
    # and the bootstrap interval of the per-event IPS terms covers the truth
    interval = bootstrap_mean(per_event_terms(log, probs)["ips"], n_resamples=300, seed=1)
    assert interval.low < TRUTH < interval.high


def test_non_uniform_logging_is_corrected_by_the_propensities() -> None:
    mu = np.array([0.4, 0.3, 0.1, 0.1, 0.1])  # the logging policy rarely shows the best arm
    log = logged_bandit(40_000, seed=2, logging=mu)
    probs = TARGET[log.actions]
    naive = float(log.rewards.mean())  # the logging policy's own value
    assert abs(naive - TRUTH) > 0.2
    assert ips_value(log, probs) == pytest.approx(TRUTH, abs=0.03)
    assert snips_value(log, probs) == pytest.approx(TRUTH, abs=0.03)


def test_dr_with_the_true_reward_model_has_lower_variance_than_ips() -> None:
    log = logged_bandit(20_000, seed=3)
    probs = TARGET[log.actions]
    terms = per_event_terms(log, probs, ARMS[log.actions], np.full(len(log), TRUTH))
    assert terms["dr"].mean() == pytest.approx(TRUTH, abs=0.01)
    # uniform μ = 1/5: Var(IPS term) = 5 Σ π²p − V², Var(DR term) = 5 Σ π² p(1 − p) (only reward noise)
    ips_var = len(ARMS) * (TARGET**2 * ARMS).sum() - TRUTH**2
    dr_var = len(ARMS) * (TARGET**2 * ARMS * (1 - ARMS)).sum()
    assert terms["ips"].var() == pytest.approx(ips_var, rel=0.05)
    assert terms["dr"].var() == pytest.approx(dr_var, rel=0.05)
    assert dr_var < 0.5 * ips_var


def test_exact_small_case() -> None:
    log = ReplayLog(np.array([0, 1, 1, 2]), np.array([0.5, 0.25, 0.25, 0.5]), np.array([1.0, 0.0, 1.0, 1.0]))
    probs = np.array([1.0, 0.0, 0.5, 0.5])
    # IPS: (1*1/0.5 + 0 + 1*0.5/0.25 + 1*0.5/0.5) / 4 = (2 + 2 + 1) / 4
    assert ips_value(log, probs) == pytest.approx(5 / 4)
    assert snips_value(log, probs) == pytest.approx(5 / (2 + 0 + 2 + 1))
    assert replay_value(log, np.array([0, 1, 0, 0])) == (0.5, 2)  # events 0 (r=1) and 1 (r=0) match
    value, matched = replay_value(log, np.array([2, 2, 2, 0]))
    assert np.isnan(value) and matched == 0
    # DR: r_hat = 0.5 everywhere, expected r_hat under the target = 0.5
    # terms: 0.5 + 2*(1-0.5) = 1.5, 0.5 + 0 = 0.5, 0.5 + 2*(1-0.5) = 1.5, 0.5 + 1*(1-0.5) = 1.0
    dr = dr_value(log, probs, np.full(4, 0.5), np.full(4, 0.5))
    assert dr == pytest.approx((1.5 + 0.5 + 1.5 + 1.0) / 4)
    # IPS of the logging policy itself is the mean logged reward
    assert ips_value(log, log.propensities) == pytest.approx(log.rewards.mean())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensities": np.array([0.0, 0.5])}, "propensities"),
        ({"propensities": np.array([0.5, 1.5])}, "propensities"),
        ({"propensities": np.array([0.5, np.nan])}, "propensities"),
        ({"rewards": np.array([1.0, np.nan])}, "NaN"),
        ({"rewards": np.array([1.0])}, "differ in length"),
        ({"actions": np.array([0.0, np.nan])}, "actions contain NaN"),
        ({"actions": np.array([[0, 1]])}, "one-dimensional"),
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
    assert issubclass(DataError, ValueError)


def test_empty_log_and_bad_target_inputs_are_rejected() -> None:
    with pytest.raises(DataError, match="empty"):
        ReplayLog(np.array([]), np.array([]), np.array([]))
    log = ReplayLog(np.array([0, 1]), np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    with pytest.raises(DataError, match="one value per logged event"):
        ips_value(log, np.array([1.0]))
    with pytest.raises(DataError, match="NaN"):
        snips_value(log, np.array([1.0, np.nan]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ips_value(log, np.array([1.5, 0.0]))
    with pytest.raises(DataError, match="one action per logged event"):
        replay_value(log, np.array([0, 1, 2]))
    with pytest.raises(DataError, match="both reward_hat_logged and expected_reward_hat"):
        per_event_terms(log, np.array([1.0, 1.0]), reward_hat_logged=np.zeros(2))


def test_frame_validation() -> None:
    frame = pl.DataFrame({"action": [1, 2], "propensity": [0.5, 0.5], "reward": [0, 1]})
    log = replay_log_from_frame(frame)
    assert log.rewards.tolist() == [0.0, 1.0] and log.actions.tolist() == [1, 2]
    with pytest.raises(DataError, match=r"missing column\(s\) \['reward'\]"):
        replay_log_from_frame(frame.drop("reward"))
    renamed = frame.rename({"action": "item", "propensity": "p"})
    assert len(replay_log_from_frame(renamed, action="item", propensity="p")) == 2
    with pytest.raises(DataError, match=r"missing column\(s\) \['action', 'propensity'\]"):
        replay_log_from_frame(renamed)
    with pytest.raises(DataError, match="nulls"):
        replay_log_from_frame(frame.with_columns(pl.Series("reward", [None, 1])))

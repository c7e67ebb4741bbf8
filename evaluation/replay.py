"""Off-policy value of a candidate policy from logged bandit feedback.

Logged traffic was chosen by the serving (logging) policy; asking "what would the candidate have
earned" needs a correction for that choice. Four standard estimators, from least to most
assumption-hungry in different ways:

* replay (Li et al., WSDM 2011): keep the events where the candidate picks the logged action and
  average their rewards; unbiased when logging was uniformly random.
* IPS:   V = mean_i  w_i r_i,                   w_i = π(a_i|x_i) / μ(a_i|x_i)
* SNIPS: V = Σ_i w_i r_i / Σ_i w_i              (self-normalised: lower variance, small bias)
* DR (Dudík et al., ICML 2011): V = mean_i [ Σ_a π(a|x_i) r̂(x_i,a) + w_i (r_i − r̂(x_i,a_i)) ]
  unbiased if either the propensities or the reward model r̂ are right.

Inputs are per logged event: the logged action a_i, its logging propensity μ(a_i|x_i), the reward
r_i, the target policy's probability π(a_i|x_i) of that same action, and for DR a reward model's
prediction r̂(x_i, a_i) and its expectation under the target, Σ_a π(a|x_i) r̂(x_i, a). The context
x_i never enters the formulas directly, so the log does not carry it.

Every estimator returns its value; :func:`per_event_terms` gives per-event terms for bootstraps.
Bad input (empty log, length mismatch, NaN, propensity outside (0, 1]) raises
:class:`~rankforge.errors.DataError`, a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rankforge.errors import DataError

LOG_COLUMNS = ("action", "propensity", "reward")


@dataclass(frozen=True)
class ReplayLog:
    """Logged events: the action shown, the logging policy's probability of it, the reward."""

    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray

    def __post_init__(self) -> None:
        for name in ("actions", "propensities", "rewards"):
            if np.ndim(getattr(self, name)) != 1:
                raise DataError(f"replay log {name} must be one-dimensional")
        n = len(self.actions)
        if n == 0:
            raise DataError("replay log is empty")
        if len(self.propensities) != n or len(self.rewards) != n:
            raise DataError(
                f"replay log columns differ in length: actions {n}, propensities {len(self.propensities)}, "
                f"rewards {len(self.rewards)}"
            )
        p = np.asarray(self.propensities, dtype=np.float64)
        if not np.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
            raise DataError("logged propensities must be finite and in (0, 1]")
        if not np.isfinite(np.asarray(self.rewards, dtype=np.float64)).all():
            raise DataError("logged rewards contain NaN or infinity")
        actions = np.asarray(self.actions)
        if actions.dtype.kind == "f" and np.isnan(actions).any():
            raise DataError("logged actions contain NaN")

    def __len__(self) -> int:
        return len(self.actions)


def replay_log_from_frame(
    frame: pl.DataFrame, action: str = "action", propensity: str = "propensity", reward: str = "reward"
) -> ReplayLog:
    """Validate a Polars log (clear error naming missing columns) and take its arrays."""
    missing = [c for c in (action, propensity, reward) if c not in frame.columns]
    if missing:
        raise DataError(f"replay log: missing column(s) {missing}; found {frame.columns}")
    if frame.select(pl.sum_horizontal(pl.col(action, propensity, reward).null_count())).item():
        raise DataError("replay log has nulls in action, propensity or reward")
    return ReplayLog(
        actions=frame[action].to_numpy(),
        propensities=frame[propensity].cast(pl.Float64).to_numpy(),
        rewards=frame[reward].cast(pl.Float64).to_numpy(),
    )


def _target(log: ReplayLog, values: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (len(log),):
        raise DataError(f"{name} must have one value per logged event ({len(log)}), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise DataError(f"{name} contains NaN or infinity")
    return v


def _target_probs(log: ReplayLog, target_probs: np.ndarray) -> np.ndarray:
    p = _target(log, target_probs, "target_probs")
    if (p < 0).any() or (p > 1).any():
        raise DataError("target_probs must be probabilities in [0, 1]")
    return p


def replay_value(log: ReplayLog, target_actions: np.ndarray) -> tuple[float, int]:
    """Replay (Li et al. 2011): V = mean of r_i over events where the target's action == a_i.

    ``target_actions``: the (deterministic) candidate's choice for each logged context. Unbiased
    when logging was uniformly random; only ~n/|actions| events survive, hence the match count.
    Returns (value, number of matches); the value is NaN when nothing matches.
    """
    chosen = np.asarray(target_actions)
    if chosen.shape != (len(log),):
        raise DataError(f"target_actions must have one action per logged event ({len(log)})")
    matched = chosen == log.actions
    n = int(matched.sum())
    return (float(log.rewards[matched].mean()) if n else float("nan")), n


def per_event_terms(
    log: ReplayLog,
    target_probs: np.ndarray,
    reward_hat_logged: np.ndarray | None = None,
    expected_reward_hat: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-event importance weights, IPS terms and (given a reward model) DR terms."""
    w = _target_probs(log, target_probs) / log.propensities
    terms = {"weight": w, "ips": w * log.rewards}
    if (reward_hat_logged is None) != (expected_reward_hat is None):
        raise DataError("DR needs both reward_hat_logged and expected_reward_hat")
    if reward_hat_logged is not None and expected_reward_hat is not None:
        r_hat = _target(log, reward_hat_logged, "reward_hat_logged")
        dm = _target(log, expected_reward_hat, "expected_reward_hat")
        terms["dr"] = dm + w * (log.rewards - r_hat)
    return terms


def ips_value(log: ReplayLog, target_probs: np.ndarray) -> float:
    """IPS: mean_i w_i r_i with w_i = π(a_i|x_i) / μ(a_i|x_i); unbiased, high variance."""
    return float(per_event_terms(log, target_probs)["ips"].mean())


def snips_value(log: ReplayLog, target_probs: np.ndarray) -> float:
    """SNIPS: Σ w_i r_i / Σ w_i; NaN when the target gives every logged action probability 0."""
    terms = per_event_terms(log, target_probs)
    total = terms["weight"].sum()
    return float(terms["ips"].sum() / total) if total > 0 else float("nan")


def dr_value(
    log: ReplayLog, target_probs: np.ndarray, reward_hat_logged: np.ndarray, expected_reward_hat: np.ndarray
) -> float:
    """Doubly robust: mean_i [ V̂_DM(x_i) + w_i (r_i − r̂(x_i, a_i)) ].

    ``reward_hat_logged``: r̂(x_i, a_i); ``expected_reward_hat``: V̂_DM(x_i) = Σ_a π(a|x_i) r̂(x_i, a).
    """
    return float(per_event_terms(log, target_probs, reward_hat_logged, expected_reward_hat)["dr"].mean())

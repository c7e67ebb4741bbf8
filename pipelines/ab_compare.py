"""Champion vs challenger on the same held-out data and the same replay log, tracked in MLflow.

Offline metrics (Recall/NDCG/HitRate/MRR@K for retrieval; AUC/LogLoss/ECE for rankers) and
off-policy replay values (replay, IPS, SNIPS, DR) are computed for both served bundles; every
delta (challenger − champion) gets a *paired* bootstrap interval over the same users / events.
One parent MLflow run holds the deltas, the plots and ``report.json``; each model gets a nested
child run with its own metrics.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from rankforge.bundles.bundle import Bundle
from rankforge.bundles.id_lookup import IdLookup
from rankforge.bundles.registry import opened_bundle
from rankforge.errors import ConfigError, DataError
from rankforge.evaluation.auction_metrics import auction_outcomes
from rankforge.evaluation.bootstrap import Interval, bootstrap, paired_bootstrap_difference
from rankforge.evaluation.metrics import (
    auc,
    expected_calibration_error,
    gauc,
    logloss,
    per_user_retrieval_metrics,
    ranking_metrics,
)
from rankforge.evaluation.plots import plot_calibration, plot_metric_at_k, plot_roc
from rankforge.evaluation.replay import ReplayLog, per_event_terms
from rankforge.features.auctions import AuctionTensors, encode_auctions, read_auctions
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.bundle_scoring import (
    RetrievalScores,
    item_rate_probabilities,
    popularity_scores,
    ranker_coverage,
    ranker_probabilities,
    score_retrieval,
    served_auction_pctr,
    slate_scores,
)
from rankforge.pipelines.replay_log import greedy_actions, policy_probabilities
from rankforge.settings import metric_name

Statistic = Callable[[np.ndarray], float]
PLOT_KS = (1, 5, 10, 20, 50)
ITEM_RATE = "item positive rate"


@dataclass(frozen=True)
class ABConfig:
    ks: tuple[int, ...] = (10, 20)
    n_resamples: int = 500
    confidence: float = 0.95
    seed: int = 0
    policy_temperature: float = 0.0  # 0: greedy policies on the replay slates
    # DR's reward model: a ranker bundle (path or models:/ URI). Unset: the champion when it is a
    # ranker, otherwise each item's smoothed positive rate in training.
    reward_model: str | None = None
    experiment: str = "rankforge-evaluation"
    # ranker bundles: also run the auctions of this held-out auction log (parquet/CSV) on the
    # bundles' pCTRs and report welfare and revenue (see evaluation.auction_metrics)
    auctions: str | None = None


@dataclass
class ModelEvaluation:
    """One model's metrics and, per metric, a statistic over resampled rows (for the bootstrap)."""

    label: str
    metrics: dict[str, float]
    statistics: dict[str, Statistic] = field(repr=False)
    curves: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    notes: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)  # per metric, over its rows
    run_id: str | None = None  # the MLflow run that logged it (evaluate)

    def to_json(self) -> dict:
        return {
            "model": self.label,
            "metrics": self.metrics,
            "intervals": {name: asdict(interval) for name, interval in self.intervals.items()},
            **self.notes,
        }


@dataclass
class ABReport:
    """Both models' evaluations and the paired intervals of challenger − champion (``deltas``);
    ``floor`` is the trivial model on the same rows (most popular unseen items for retrieval, the
    item's positive rate for a ranker) and ``over_floor`` the intervals of challenger − floor over
    the metrics it has (offline ones: it has no replay policy or auctions)."""

    kind: str
    champion: ModelEvaluation
    challenger: ModelEvaluation
    deltas: dict[str, Interval]
    run_id: str | None = None
    reward_model: str = ITEM_RATE
    floor: ModelEvaluation | None = None
    over_floor: dict[str, Interval] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "champion": self.champion.to_json(),
            "challenger": self.challenger.to_json(),
            "deltas": {name: asdict(interval) for name, interval in self.deltas.items()},
            "reward_model": self.reward_model,
            "run_id": self.run_id,
            **({"floor": self.floor.to_json()} if self.floor is not None else {}),
            "over_floor": {name: asdict(interval) for name, interval in self.over_floor.items()},
        }


def _retrieval_evaluation(scored: RetrievalScores, users: np.ndarray, ks: tuple[int, ...]) -> ModelEvaluation:
    """Per-user metrics restricted to ``users`` (those both models can be evaluated on)."""
    all_ks = tuple(sorted(set(ks) | set(PLOT_KS)))
    per_user = per_user_retrieval_metrics(scored.scores, scored.relevant, scored.exclude, ks=all_ks)
    evaluated = scored.users[per_user.pop("user")]
    if not np.isin(users, evaluated).all():
        raise DataError("champion and challenger evaluate different users; cannot pair them")
    aligned = {name: values[np.searchsorted(evaluated, users)] for name, values in per_user.items()}
    metrics = {name: float(values.mean()) for name, values in aligned.items()}
    return ModelEvaluation(
        label="",
        metrics={k: v for k, v in metrics.items() if int(k.split("@")[1]) in ks},
        statistics={name: _mean_of(values) for name, values in aligned.items()},
        curves={name: np.array([metrics[f"{name}@{k}"] for k in PLOT_KS]) for name in ("recall", "ndcg")},
        notes={
            "cold_users": scored.cold_users,
            "dropped_items": scored.dropped_items,
            "evaluated_users": len(users),
        },
    )


def _mean_of(values: np.ndarray) -> Statistic:
    return lambda rows: float(values[rows].mean())


def _ranker_evaluation(bundle: Bundle, data: PreparedData, events: pl.DataFrame) -> ModelEvaluation:
    """CTR metrics over ``events`` (held-out events whose items the compared bundles know)."""
    if events.height == 0:
        raise DataError(f"no held-out event has an item known to {bundle.directory}")
    return _ctr_evaluation(events, ranker_probabilities(bundle, events, data))


def _ctr_evaluation(events: pl.DataFrame, probs: np.ndarray) -> ModelEvaluation:
    """AUC, LogLoss, ECE (and GAUC where users have both labels) of ``probs`` on ``events``."""
    labels = events["label"].to_numpy().astype(np.float64)
    users = events["user_idx"].to_numpy()
    metrics = ranking_metrics(labels, probs)
    stats: dict[str, Statistic] = {
        "auc": lambda rows: auc(labels[rows], probs[rows]),
        "logloss": lambda rows: logloss(labels[rows], probs[rows]),
        "ece": lambda rows: expected_calibration_error(labels[rows], probs[rows]),
    }
    try:  # GAUC needs users with both labels among the held-out events
        metrics["gauc"] = gauc(labels, probs, users)
        stats["gauc"] = lambda rows: _gauc_or_nan(labels[rows], probs[rows], users[rows])
    except ValueError:
        pass
    return ModelEvaluation(
        label="", metrics=metrics, statistics=stats, curves={"labels": labels, "probs": probs}
    )


#: What an auction log adds to a ranker's evaluation; each is a per-auction statistic.
AUCTION_METRICS = (
    "welfare_ratio",
    "expected_welfare",
    "realized_welfare",
    "expected_revenue",
    "realized_revenue",
)


def held_out_auctions(path: str, data: PreparedData) -> AuctionTensors:
    """A held-out auction log, encoded with the evaluation data's ids (its ads' features)."""
    return encode_auctions(read_auctions(path), data.mapping)


def _auction_evaluation(bundle: Bundle, data: PreparedData, auctions: AuctionTensors) -> ModelEvaluation:
    """The auctions run on the bundle's served pCTRs: welfare (and its ratio to the oracle when the
    log has true CTRs) and second-price revenue, each a statistic over resampled auctions."""
    out = auction_outcomes(served_auction_pctr(bundle, auctions, data), **auctions.outcome_inputs())
    stats: dict[str, Statistic] = {
        "realized_welfare": _mean_of(out.realized_welfare),
        "realized_revenue": _mean_of(out.realized_revenue),
    }
    if auctions.true_ctr is not None:
        stats.update(
            welfare_ratio=out.welfare_ratio,
            expected_welfare=_mean_of(out.expected_welfare),
            expected_revenue=_mean_of(out.expected_revenue),
        )
    every = np.arange(auctions.n_auctions)
    return ModelEvaluation(
        label="",
        metrics={name: stat(every) for name, stat in stats.items()},
        statistics=stats,
        notes={"evaluated_auctions": auctions.n_auctions},
    )


def _gauc_or_nan(labels: np.ndarray, probs: np.ndarray, users: np.ndarray) -> float:
    """GAUC of a bootstrap resample; NaN when the resample has no user with both labels."""
    try:
        return gauc(labels, probs, users)
    except ValueError:
        return float("nan")


def reward_model_estimates(
    config: ABConfig, data: PreparedData, log: pl.DataFrame, evaluated: Bundle
) -> tuple[np.ndarray, str]:
    """DR's reward estimates for the log's slates (:func:`reward_estimates`) and which model gave
    them: the configured ranker (downloaded for this and removed again), else ``evaluated`` (the
    champion, in a comparison) when it is a ranker, else item positive rates."""
    if config.reward_model is None:
        ranker = evaluated if evaluated.manifest.kind == "ranker" else None
        return reward_estimates(data, log, ranker), ITEM_RATE if ranker is None else "champion ranker"
    with opened_bundle(config.reward_model) as bundle:
        if bundle.manifest.kind != "ranker":
            kind = bundle.manifest.kind
            raise ConfigError(f"reward model {config.reward_model!r} is a {kind} bundle, not a ranker")
        return reward_estimates(data, log, bundle), str(config.reward_model)


def reward_estimates(data: PreparedData, log: pl.DataFrame, ranker: Bundle | None) -> np.ndarray:
    """r̂ for every slate item ``[events, slate]``, shared by both models of a comparison so the DR
    difference reflects the policies, not two different reward models."""
    if ranker is not None:
        return slate_scores(ranker, log, data)
    rates = data.item_features["item_pos_rate"].to_numpy().astype(np.float64)  # indexed by item_idx
    items = IdLookup.items(data.mapping).encode(np.stack(log["slate"].to_numpy()))
    return np.where(items >= 0, rates[np.maximum(items, 0)], 0.0)


def _replay_evaluation(
    bundle: Bundle, data: PreparedData, log: pl.DataFrame, temperature: float, r_hat_slate: np.ndarray
) -> ModelEvaluation:
    """Replay/IPS/SNIPS/DR of the bundle's policy over the log's slates (DR with ``r_hat_slate``)."""
    slates_raw = np.stack(log["slate"].to_numpy())
    scores = slate_scores(bundle, log, data)
    action_index = np.argmax(slates_raw == log["action"].to_numpy()[:, None], axis=1)
    probs, target = policy_probabilities(scores, action_index, temperature)
    r_hat_logged = r_hat_slate[np.arange(len(log)), action_index]
    propensities = log["propensity"].to_numpy()
    rewards = log["reward"].to_numpy()
    replay = ReplayLog(log["action"].to_numpy(), propensities, rewards)
    terms = per_event_terms(replay, target, r_hat_logged, (probs * r_hat_slate).sum(axis=1))
    matched = greedy_actions(slates_raw, scores) == replay.actions

    def replay_stat(rows: np.ndarray) -> float:
        m = matched[rows]
        return float(rewards[rows][m].mean()) if m.any() else float("nan")

    stats: dict[str, Statistic] = {
        "replay": replay_stat,
        "ips": lambda rows: float(terms["ips"][rows].mean()),
        "snips": lambda rows: float(terms["ips"][rows].sum() / max(terms["weight"][rows].sum(), 1e-12)),
        "dr": lambda rows: float(terms["dr"][rows].mean()),
    }
    every = np.arange(len(log))
    return ModelEvaluation(
        label="",
        metrics={name: f(every) for name, f in stats.items()},
        statistics=stats,
        notes={"replay_matches": int(matched.sum())},
    )


def evaluate_bundle(
    bundle: Bundle,
    data: PreparedData,
    log: pl.DataFrame,
    config: ABConfig,
    scored: RetrievalScores | None = None,
    users: np.ndarray | None = None,
    events: pl.DataFrame | None = None,
    r_hat_slate: np.ndarray | None = None,
) -> ModelEvaluation:
    """Offline metrics and replay values of one served bundle.

    Retrieval: over ``users``, by default every held-out user it can evaluate. Ranker: over
    ``events``, by default the held-out events whose item it knows. ``r_hat_slate``: DR's reward
    estimates for the log's slates, by default from :func:`reward_model_estimates`.
    """
    if bundle.manifest.kind == "retrieval":
        scored = scored if scored is not None else score_retrieval(bundle, data)
        users = users if users is not None else _evaluable(scored)
        offline = _retrieval_evaluation(scored, users, config.ks)
    else:
        known, counts = ranker_coverage(bundle, data.test_events)
        events = events if events is not None else data.test_events.filter(pl.Series(known))
        offline = _ranker_evaluation(bundle, data, events)
        offline.notes = {**counts, "evaluated_events": events.height}
    if r_hat_slate is None:
        r_hat_slate, _ = reward_model_estimates(config, data, log, bundle)
    replay = _replay_evaluation(bundle, data, log, config.policy_temperature, r_hat_slate)
    auction = (
        _auction_evaluation(bundle, data, held_out_auctions(config.auctions, data))
        if config.auctions is not None and bundle.manifest.kind == "ranker"
        else ModelEvaluation(label="", metrics={}, statistics={})
    )
    offline.notes = {**_coverage_notes(data), **offline.notes}
    evaluation = ModelEvaluation(
        label=str(bundle.directory),
        metrics={
            **offline.metrics,
            **auction.metrics,
            **{f"replay_{k}": v for k, v in replay.metrics.items()},
        },
        statistics={
            **offline.statistics,
            **auction.statistics,
            **{f"replay_{k}": v for k, v in replay.statistics.items()},
        },
        curves=offline.curves,
        notes={**offline.notes, **auction.notes, **replay.notes},
    )
    n_offline = len(users) if users is not None else len(events) if events is not None else 0
    evaluation.intervals = {
        name: bootstrap(
            evaluation.statistics[name],
            _rows(name, log.height, n_offline, auction.notes.get("evaluated_auctions", 0)),
            n_resamples=config.n_resamples,
            confidence=config.confidence,
            seed=config.seed,
        )
        for name in evaluation.metrics
    }
    return evaluation


def _coverage_notes(data: PreparedData) -> dict[str, int]:
    """What the held-out data lost before any model saw it (``features.coverage``): the split's
    events and users, and those dropped as cold users or unknown items or without a positive."""
    coverage = data.coverage.get("test")
    if coverage is None:
        return {}
    return {
        "held_out_events": coverage.events,
        "held_out_users": coverage.users,
        "dropped_cold_users": coverage.cold_users,
        "dropped_cold_user_events": coverage.cold_user_events,
        "dropped_unknown_item_events": coverage.unknown_item_events,
        "users_without_positive": coverage.users_without_positive,
    }


def _rows(metric: str, replay_events: int, offline: int, auctions: int) -> int:
    """How many rows a metric's statistic resamples: replay events, auctions, or held-out rows."""
    if metric.startswith("replay_"):
        return replay_events
    return auctions if metric in AUCTION_METRICS else offline


def _evaluable(scored: RetrievalScores) -> np.ndarray:
    return scored.evaluable()


def compare(
    champion: Bundle,
    challenger: Bundle,
    data: PreparedData,
    log: pl.DataFrame,
    config: ABConfig | None = None,
) -> ABReport:
    """Metrics of both bundles and paired-bootstrap intervals of every delta (no MLflow).

    Retrieval metrics are paired over the held-out users both models can be evaluated on, ranker
    metrics over the held-out events whose items both know, replay values over the log's events
    (DR with one reward model for both, see :func:`reward_model_estimates`).
    """
    config = config or ABConfig()
    if champion.manifest.kind != challenger.manifest.kind:
        raise DataError(
            f"cannot compare a {champion.manifest.kind} bundle with a {challenger.manifest.kind} one"
        )
    kind = champion.manifest.kind
    r_hat, described = reward_model_estimates(config, data, log, champion)
    if kind == "retrieval":
        scored = [score_retrieval(b, data) for b in (champion, challenger)]
        users = np.intersect1d(_evaluable(scored[0]), _evaluable(scored[1]))
        if len(users) == 0:
            raise DataError("no held-out user can be evaluated by both models")
        old = evaluate_bundle(champion, data, log, config, scored[0], users, r_hat_slate=r_hat)
        new = evaluate_bundle(challenger, data, log, config, scored[1], users, r_hat_slate=r_hat)
        floor = _retrieval_evaluation(popularity_scores(scored[1], challenger, data), users, config.ks)
        floor.label = POPULARITY_FLOOR
        n_offline = len(users)
    else:
        known = [ranker_coverage(b, data.test_events)[0] for b in (champion, challenger)]
        events = data.test_events.filter(pl.Series(known[0] & known[1]))
        old = evaluate_bundle(champion, data, log, config, events=events, r_hat_slate=r_hat)
        new = evaluate_bundle(challenger, data, log, config, events=events, r_hat_slate=r_hat)
        floor = _ctr_evaluation(events, item_rate_probabilities(data, events))
        floor.label = ITEM_RATE_FLOOR
        n_offline = events.height

    def paired(a: ModelEvaluation, b: ModelEvaluation, name: str) -> Interval:
        return paired_bootstrap_difference(
            a.statistics[name],
            b.statistics[name],
            _rows(name, log.height, n_offline, old.notes.get("evaluated_auctions", 0)),
            n_resamples=config.n_resamples,
            confidence=config.confidence,
            seed=config.seed,
        )

    return ABReport(
        kind=kind,
        champion=old,
        challenger=new,
        deltas={name: paired(new, old, name) for name in old.metrics},
        reward_model=described,
        floor=floor,
        over_floor={name: paired(new, floor, name) for name in floor.metrics},
    )


#: What the floors are called in reports and reasons.
POPULARITY_FLOOR = "popularity (most popular unseen items)"
ITEM_RATE_FLOOR = "item rate (each item's positive rate in training)"


def _plots(report: ABReport, directory: Path) -> list[Path]:
    models = {"champion": report.champion, "challenger": report.challenger}
    if report.kind == "retrieval":
        return [
            plot_metric_at_k(
                {
                    role: dict(zip(PLOT_KS, ev.curves[metric].tolist(), strict=True))
                    for role, ev in models.items()
                },
                metric,
                directory / f"{metric}_at_k.png",
            )
            for metric in ("recall", "ndcg")
        ]
    curves = {role: (ev.curves["labels"], ev.curves["probs"]) for role, ev in models.items()}
    return [plot_roc(curves, directory / "roc.png"), plot_calibration(curves, directory / "calibration.png")]


def run_ab_comparison(
    champion_uri: str,
    challenger_uri: str,
    data: PreparedData,
    log: pl.DataFrame,
    config: ABConfig | None = None,
) -> ABReport:
    """Compare two served models (registry URIs or bundle paths) and track it all in MLflow.

    Needs MLflow configured (``rankforge.settings.configure_mlflow``).
    """
    config = config or ABConfig()
    with opened_bundle(champion_uri) as champion, opened_bundle(challenger_uri) as challenger:
        report = compare(champion, challenger, data, log, config)
    report.champion.label, report.challenger.label = champion_uri, challenger_uri
    with mlflow.start_run(run_name=f"ab {champion_uri} vs {challenger_uri}") as parent:
        report.run_id = parent.info.run_id
        mlflow.set_tags(
            {"rankforge.job": "ab_compare", "champion": champion_uri, "challenger": challenger_uri}
        )
        mlflow.log_params(
            {
                "n_resamples": config.n_resamples,
                "confidence": config.confidence,
                "seed": config.seed,
                "replay_events": log.height,
                "kind": report.kind,
                "reward_model": report.reward_model,
                "policy_temperature": config.policy_temperature,
            }
        )
        for role, evaluation in (("champion", report.champion), ("challenger", report.challenger)):
            with mlflow.start_run(run_name=role, nested=True):
                mlflow.set_tags({"role": role, "model": evaluation.label})
                mlflow.log_metrics(metrics_with_intervals(evaluation))
        for name, interval in report.deltas.items():
            for suffix, value in (("", interval.estimate), ("_low", interval.low), ("_high", interval.high)):
                if np.isfinite(value):
                    mlflow.log_metric(f"delta_{metric_name(name)}{suffix}", value)
        with tempfile.TemporaryDirectory() as tmp:
            for path in _plots(report, Path(tmp)):
                mlflow.log_artifact(str(path), "plots")
        mlflow.log_dict(report.to_json(), "report.json")
    return report


def metrics_with_intervals(evaluation: ModelEvaluation) -> dict[str, float]:
    """MLflow metrics of one model: each value and its bootstrap bounds (``_low``/``_high``)."""
    out: dict[str, float] = {}
    for name, value in evaluation.metrics.items():
        interval = evaluation.intervals.get(name, Interval(value, float("nan"), float("nan")))
        for suffix, v in (("", value), ("_low", interval.low), ("_high", interval.high)):
            if np.isfinite(v):
                out[f"{metric_name(name)}{suffix}"] = v
    return out


def format_report(report: ABReport) -> str:
    """One line per metric: champion, challenger, the delta with its interval and, where the
    metric has one, the floor on the same rows."""
    floor = report.floor.metrics if report.floor is not None else {}
    lines = [f"{'metric':<18}{'champion':>10}{'challenger':>12}{'delta':>10}  {'interval':<18}{'floor':>8}"]
    for name, interval in report.deltas.items():
        bounds = f"[{interval.low:+.4f}, {interval.high:+.4f}]"
        lines.append(
            f"{name:<18}{report.champion.metrics[name]:>10.4f}{report.challenger.metrics[name]:>12.4f}"
            f"{interval.estimate:>+10.4f}  {bounds:<18}"
            + (f"{floor[name]:>8.4f}" if name in floor else f"{'-':>8}")
        )
    if report.floor is not None:
        lines.append(f"floor: {report.floor.label}, scored on the same rows")
    return "\n".join(lines)


def dumps(report: ABReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=True)

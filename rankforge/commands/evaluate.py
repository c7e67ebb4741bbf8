"""``rankforge evaluate`` and ``rankforge promote``: the jobs that decide what gets served."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy modules load only when a command runs
    from rankforge.features.pipeline import DataConfig
    from rankforge.pipelines.ab_compare import ABConfig


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-config",
        type=Path,
        default=None,
        help="held-out data: a data config or a training config ([data] section); default: the synthetic log",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a data setting (repeatable), e.g. source=file, path=log.parquet, synthetic.n_users=60",
    )
    parser.add_argument("--replay-log", default=None, help="replay log parquet; default: built from the data")
    parser.add_argument(
        "--reward-model",
        default=None,
        help="ranker (models:/ URI or bundle path) whose P(positive) is DR's reward model; "
        "default: the (champion) model itself if it is a ranker, else item positive rates",
    )
    parser.add_argument(
        "--auctions",
        default=None,
        help="held-out auction log (parquet/CSV): ranker models are also judged by the welfare and "
        "revenue of these auctions run on their pCTRs (welfare_ratio needs the log's true_ctr)",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20], help="cutoffs for @K metrics")
    parser.add_argument(
        "--policy-temperature",
        type=float,
        default=0.0,
        help="replay policies: 0 = greedy over the slate (default), > 0 = softmax(score / T)",
    )
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiment", default="rankforge-evaluation", help="MLflow experiment")


def _setup(args: argparse.Namespace) -> tuple[DataConfig, ABConfig]:
    """MLflow pointed at the configured store; the data and comparison settings of the command."""
    from rankforge.pipelines.ab_compare import ABConfig
    from rankforge.pipelines.evaluate_config import data_config
    from rankforge.settings import Settings, configure_mlflow

    data = data_config(args.data_config, args.data)  # config errors before any MLflow work
    # evaluate reads a registered model (or a bundle path); promote always reads the registry
    registry = getattr(args, "func", None) is _promote or str(getattr(args, "model", "")).startswith(
        "models:/"
    )
    configure_mlflow(Settings.from_env(), args.experiment, expect_existing=registry)
    config = ABConfig(
        ks=tuple(args.ks),
        n_resamples=args.resamples,
        seed=args.seed,
        experiment=args.experiment,
        reward_model=args.reward_model,
        policy_temperature=args.policy_temperature,
        auctions=args.auctions,
    )
    return data, config


def _evaluate(args: argparse.Namespace) -> int:
    from rankforge.features.pipeline import prepare
    from rankforge.pipelines.evaluate import run_evaluation
    from rankforge.pipelines.replay_log import build_replay_log, read_replay_log

    data_config, config = _setup(args)
    data = prepare(data_config)
    log = read_replay_log(args.replay_log) if args.replay_log else build_replay_log(data, seed=args.seed)
    evaluation = run_evaluation(args.model, data, log, config)
    for name, value in evaluation.metrics.items():
        print(f"{name:<16}{value:>10.4f}")
    matches = evaluation.notes.get("replay_matches")
    print(f"{'replay_matched':<16}{matches:>10} of {log.height} logged events (replay averages over these)")
    print(f"coverage: {coverage_line(evaluation.notes)}")
    _where_logged(evaluation.run_id)
    return 0


def coverage_line(notes: dict[str, int]) -> str:
    """How many held-out users (retrieval) or events (ranker) the metrics scored, and what was
    not scored and why."""
    if "evaluated_users" in notes:
        scored = f"{notes['evaluated_users']:,} of {notes.get('held_out_users', 0):,} held-out users scored"
    else:
        events = notes.get("evaluated_events", 0)
        scored = f"{events:,} of {notes.get('held_out_events', 0):,} held-out events scored"
    reasons = {
        "dropped_cold_users": "users not in the data's training part",
        "dropped_unknown_item_events": "events on items not in its catalogue",
        "users_without_positive": "users without a held-out positive",
        "cold_users": "users the model never saw (scored as cold starts)",
        "cold_user_events": "events of users the model never saw (scored as cold starts)",
        "dropped_items": "held-out positives on items the model does not know",
        "dropped_item_events": "events on items the model does not know",
    }
    parts = [f"{notes[k]:,} {why}" for k, why in reasons.items() if notes.get(k)]
    return scored + ("; " + ", ".join(parts) if parts else "")


def _where_logged(run_id: str | None) -> None:
    """The closing lines of a tracked command: its MLflow run and how to look at it."""
    from rankforge.settings import Settings

    print(f"run {run_id}; browse it: mlflow ui --backend-store-uri {Settings.from_env().tracking_uri}")


def _promote(args: argparse.Namespace) -> int:
    from rankforge.pipelines.promote import Criterion, promote_if_better

    data_config, config = _setup(args)
    criteria = tuple(Criterion.parse(m) for m in args.metric) if args.metric else None
    challenger = int(args.challenger) if args.challenger.isdigit() else args.challenger
    decision = promote_if_better(
        args.name,
        challenger,
        data_config,
        criteria,
        config,
        args.replay_log,
        dry_run=args.dry_run,
        allow_different_data=args.allow_different_data,
        allow_below_floor=args.allow_below_floor,
    )
    verdict = "PROMOTE" if decision.promote else "KEEP CHAMPION"
    new = args.challenger if decision.challenger_version is None else f"v{decision.challenger_version}"
    print(
        f"{verdict}{' (dry run)' if args.dry_run else ''}: {args.name} champion v{decision.champion_version} "
        f"vs challenger {new}"
    )
    for reason in decision.reasons:
        print(f"  - {reason}")
    if "paired" in decision.details:
        print(f"  ({decision.details['paired']})")
    if args.json:
        print(
            json.dumps(
                {"promote": decision.promote, "applied": decision.applied, "reasons": decision.reasons}
            )
        )
    _where_logged(decision.report_run_id)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="offline metrics + replay values of one model, logged to MLflow",
        description="Score one served bundle (ONNX Runtime, the bundle's own id mapping) on held-out "
        "data: Recall/NDCG@K for retrieval, AUC/GAUC/LogLoss/ECE for rankers, and replay/IPS/SNIPS/DR "
        "values of its policy, with bootstrap intervals; everything goes to one MLflow run.",
    )
    ev.add_argument("model", help="models:/name@alias, models:/name/version, or a bundle directory")
    _common(ev)
    ev.set_defaults(func=_evaluate)

    pr = subparsers.add_parser(
        "promote",
        help="A/B the challenger against the champion; move the champion alias only if it wins",
        description="Compare NAME@champion with a challenger on the same held-out data and replay log "
        "(paired bootstrap intervals), log the comparison to MLflow, and give the challenger the "
        "champion alias only when every criterion improves beyond its interval and the challenger "
        "beats the trivial floor (popularity; a ranker: item rate) on the same rows.",
    )
    pr.add_argument("name", help="registered model name, e.g. rankforge-retrieval")
    pr.add_argument(
        "--challenger",
        default="latest",
        help="version number, alias, 'latest' (default), or a bundle directory "
        "(registered as a new version first, unless --dry-run)",
    )
    pr.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="METRIC[:higher|lower]",
        help="criterion metric (repeatable), optionally with its direction; without one, logloss/ece "
        "are lower-is-better. Default: recall@20+ndcg@20 (retrieval), auc+logloss (ranker)",
    )
    pr.add_argument("--dry-run", action="store_true", help="decide and log, but do not move aliases")
    pr.add_argument(
        "--allow-different-data",
        action="store_true",
        help="compare even when champion and challenger were trained on different data sets "
        "(refused by default: their ids and metrics are not comparable)",
    )
    pr.add_argument(
        "--allow-below-floor",
        action="store_true",
        help="promote even a challenger that does not beat the trivial floor on the same rows (most "
        "popular unseen items; a ranker: each item's positive rate), refused by default; the "
        "override is tagged on the version (promotion.below_floor)",
    )
    pr.add_argument("--json", action="store_true", help="also print the decision as JSON")
    _common(pr)
    pr.set_defaults(func=_promote)

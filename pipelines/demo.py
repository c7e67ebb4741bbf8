"""The main job end to end, on the embedded defaults: log -> models -> registry -> live service.

It chains the jobs a user would otherwise run one by one (``rankforge train`` twice, ``rankforge
promote`` for each model, ``rankforge materialize``, ``rankforge serve``, ``rankforge query``), so
one command
shows the whole platform working against the real parts: an MLflow SQLite store, the model
registry, Redis and a gRPC server on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rankforge.features.pipeline import prepare
from rankforge.pipelines.ab_compare import ABConfig
from rankforge.pipelines.promote import Decision, promote_if_better
from rankforge.pipelines.train import TrainResult, run_training
from rankforge.pipelines.train_config import TrainConfig, load_config
from rankforge.serving.client import RankingClient, RankResult
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_reader import connect
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.server import RankingServer, ServerConfig
from rankforge.settings import Settings, configure_mlflow


@dataclass
class DemoResult:
    retrieval: TrainResult
    ranker: TrainResult
    decisions: dict[str, Decision]
    feature_version: str
    answers: dict[int, RankResult] = field(default_factory=dict)


def _fresh(config: TrainConfig, run_dir: Path, name: str) -> TrainConfig:
    """Each demo run trains from scratch in its own directory (no resume of an older run)."""
    return config.model_copy(update={"output_dir": run_dir / name})


def _config(source: str | Path | TrainConfig) -> TrainConfig:
    return source if isinstance(source, TrainConfig) else load_config(source)


def run_demo(
    retrieval_config: str | Path | TrainConfig = "configs/retrieval.toml",
    ranking_config: str | Path | TrainConfig = "configs/ranking.toml",
    n_users: int = 3,
    k: int = 5,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Train both models, register them, write online features, serve and query a few users."""
    settings = Settings.from_env()
    run_dir = settings.home / "demo" / time.strftime("%Y%m%d-%H%M%S")
    retrieval_cfg = _fresh(_config(retrieval_config), run_dir, "retrieval")
    ranking_cfg = _fresh(_config(ranking_config), run_dir, "ranking")

    say(f"[1/5] training the retrieval two-tower ({retrieval_cfg.source_path or 'given config'})")
    retrieval = run_training(retrieval_cfg)
    say(f"      {_summary(retrieval)}")
    say(f"[2/5] training the DLRM ranker ({ranking_cfg.source_path or 'given config'})")
    ranker = run_training(ranking_cfg)
    say(f"      {_summary(ranker)}")

    say("[3/5] champion vs challenger: A/B on held-out data and a replay log, promote if better")
    configure_mlflow(settings, "rankforge-evaluation")
    decisions = {}
    for cfg, trained in ((retrieval_cfg, retrieval), (ranking_cfg, ranker)):
        decision = promote_if_better(
            cfg.registered_model, trained.registered.version, cfg.data, config=ABConfig(n_resamples=200)
        )
        decisions[cfg.registered_model] = decision
        verdict = "promoted" if decision.applied else "champion kept"
        say(f"      {cfg.registered_model} v{trained.registered.version}: {verdict}")
        for reason in decision.reasons:
            say(f"        - {reason}")

    say(f"[4/5] materialising online features into Redis at {settings.redis_url}")
    data = prepare(ranking_cfg.data)
    report = FeatureWriter(connect(settings.redis_url), KeyLayout()).write(data)
    say(f"      feature version {report.version}: {report.n_users} users, {report.n_items} items")

    say("[5/5] serving the registry champions over gRPC and querying it")
    server = RankingServer(
        ServerConfig(
            retrieval=f"models:/{retrieval_cfg.registered_model}@champion",
            ranker=f"models:/{ranking_cfg.registered_model}@champion",
            redis_url=settings.redis_url,
            port=0,
            refresh_interval_s=0,
        )
    ).start()
    result = DemoResult(retrieval, ranker, decisions, report.version)
    try:
        users = data.test_events.select("user_id").unique(maintain_order=True).head(n_users)
        with RankingClient(server.address, timeout_s=5.0) as client:
            client.wait_ready()
            for user_id in users["user_id"].to_list():
                answer = client.rank(int(user_id), k=k, request_id=f"demo-{user_id}")
                result.answers[int(user_id)] = answer
                say(_format_answer(int(user_id), answer, data.test_events))
    finally:
        server.stop(grace_s=1.0)
    say(f"MLflow store: {settings.tracking_uri}  (mlflow ui --backend-store-uri {settings.tracking_uri})")
    return result


def _summary(result: TrainResult) -> str:
    registered = (
        f"{result.registered.name} v{result.registered.version}" if result.registered else "not registered"
    )
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    return f"run {result.run_id}: {registered}; {metrics}"


def _format_answer(user_id: int, answer: RankResult, test_events: pl.DataFrame) -> str:
    held_out = set(test_events.filter(pl.col("user_id") == user_id)["item_id"].to_list())
    items = ", ".join(
        f"{i.item_id}{'*' if i.item_id in held_out else ''}({i.score:.2f})" for i in answer.items
    )
    versions = f"retrieval {answer.retrieval_version}, ranker {answer.ranker_version}"
    return f"      user {user_id}: {items}   [{versions}; * = the user's held-out item]"

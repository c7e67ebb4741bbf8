"""The main job end to end, on the embedded defaults: log -> models -> registry -> live service.

It chains the jobs a user would otherwise run one by one (``rankforge train`` for the retrieval
model, the ranker and two ad rankers, ``rankforge promote`` for each, ``rankforge materialize``,
``rankforge serve``, ``rankforge query`` and ``rankforge auction``), so one command shows the whole
platform working against the real parts: an MLflow SQLite store, the model registry, Redis and a
gRPC server on loopback. The ads path trains a BCE ad ranker (the champion) and a welfare-rankloss
one on simulated auctions, and promotes the challenger only if it raises the welfare of held-out
auctions beyond its interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rankforge.features.auction_simulator import simulate_auctions
from rankforge.features.pipeline import PreparedData, prepare
from rankforge.pipelines.ab_compare import ABConfig
from rankforge.pipelines.promote import Criterion, Decision, promote_if_better
from rankforge.pipelines.train import TrainResult, run_training
from rankforge.serving.client import AuctionResult, RankingClient, RankResult
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_reader import connect
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.redis_urls import masked
from rankforge.serving.server import RankingServer, ServerConfig
from rankforge.settings import Settings, configure_mlflow
from rankforge.training.config import ObjectiveConfig, TrainConfig, load_config


@dataclass
class DemoResult:
    retrieval: TrainResult
    ranker: TrainResult
    decisions: dict[str, Decision]
    feature_version: str
    answers: dict[int, RankResult] = field(default_factory=dict)
    ad_rankers: list[TrainResult] = field(default_factory=list)  # BCE (champion), welfare challenger
    auction: AuctionResult | None = None


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
    ads_config: str | Path | TrainConfig | None = "configs/ads.toml",
) -> DemoResult:
    """Train the models, register them, write online features, serve and query a few users (and,
    with ``ads_config``, run the ads path: train, promote on welfare, serve an auction)."""
    settings = Settings.from_env()
    run_dir = settings.home / "demo" / time.strftime("%Y%m%d-%H%M%S")
    retrieval_cfg = _fresh(_config(retrieval_config), run_dir, "retrieval")
    ranking_cfg = _fresh(_config(ranking_config), run_dir, "ranking")
    ads_cfg = None if ads_config is None else _fresh(_config(ads_config), run_dir, "ads")
    steps = 5 if ads_cfg is None else 6

    say(f"[1/{steps}] training the retrieval two-tower ({retrieval_cfg.source_path or 'given config'})")
    retrieval = run_training(retrieval_cfg)
    say(f"      {_summary(retrieval)}")
    say(f"[2/{steps}] training the DLRM ranker ({ranking_cfg.source_path or 'given config'})")
    ranker = run_training(ranking_cfg)
    say(f"      {_summary(ranker)}")

    say(f"[3/{steps}] champion vs challenger: A/B on held-out data and a replay log, promote if better")
    decisions = _promote_challengers([(retrieval_cfg, retrieval), (ranking_cfg, ranker)], settings, say)

    ad_rankers: list[TrainResult] = []
    if ads_cfg is not None:
        say(
            f"[4/{steps}] ads: BCE and welfare-rankloss ad rankers on simulated auctions, promoted on welfare"
        )
        ad_rankers = _ads(ads_cfg, run_dir, settings, say)

    say(f"[{steps - 1}/{steps}] materialising online features into Redis at {masked(settings.redis_url)}")
    data = prepare(ranking_cfg.data)
    report = FeatureWriter(connect(settings.redis_url), KeyLayout()).write(data)
    say(f"      feature version {report.version}: {report.n_users} users, {report.n_items} items")

    say(f"[{steps}/{steps}] serving the registry champions over gRPC and querying it")
    result = DemoResult(retrieval, ranker, decisions, report.version, ad_rankers=ad_rankers)
    _serve_and_query(result, data, (retrieval_cfg, ranking_cfg, ads_cfg), settings, n_users, k, say)
    say(f"MLflow store: {settings.tracking_uri}  (mlflow ui --backend-store-uri {settings.tracking_uri})")
    return result


def _promote_challengers(
    trained: list[tuple[TrainConfig, TrainResult]], settings: Settings, say: Callable[[str], None]
) -> dict[str, Decision]:
    """A/B each newly registered model against its champion; promote it when it wins."""
    configure_mlflow(settings, "rankforge-evaluation")
    decisions = {}
    for cfg, result in trained:
        assert result.registered is not None  # the demo's configs register their models
        decision = promote_if_better(
            cfg.registered_model, result.registered.version, cfg.data, config=ABConfig(n_resamples=200)
        )
        decisions[cfg.registered_model] = decision
        verdict = "promoted" if decision.applied else "champion kept"
        say(f"      {cfg.registered_model} v{result.registered.version}: {verdict}")
        for reason in decision.reasons:
            say(f"        - {reason}")
    return decisions


def _serve_and_query(
    result: DemoResult,
    data: PreparedData,
    configs: tuple[TrainConfig, TrainConfig, TrainConfig | None],
    settings: Settings,
    n_users: int,
    k: int,
    say: Callable[[str], None],
) -> None:
    """Serve the registry champions (retrieval, ranker, ad ranker) on a free port, rank
    ``n_users`` test users (and run one auction with an ad ranker) and record the answers in
    ``result``; the server is stopped either way."""
    retrieval_cfg, ranking_cfg, ads_cfg = configs
    server = RankingServer(
        ServerConfig(
            retrieval=f"models:/{retrieval_cfg.registered_model}@champion",
            ranker=f"models:/{ranking_cfg.registered_model}@champion",
            redis_url=settings.redis_url,
            port=0,
            refresh_interval_s=0,
            ad_ranker=None if ads_cfg is None else f"models:/{ads_cfg.registered_model}@champion",
        )
    ).start()
    try:
        users = data.test_events.select("user_id").unique(maintain_order=True).head(n_users)
        with RankingClient(server.address, timeout_s=5.0) as client:
            client.wait_ready()
            for user_id in users["user_id"].to_list():
                answer = client.rank(int(user_id), k=k, request_id=f"demo-{user_id}")
                result.answers[int(user_id)] = answer
                say(_format_answer(int(user_id), answer, data.test_events))
            if ads_cfg is not None:
                user = int(users["user_id"][0])
                ads = data.item_features["item_id"].head(5).to_list()
                bids = {int(ad): round(0.5 + 0.5 * i, 2) for i, ad in enumerate(ads)}
                result.auction = client.auction(user, bids, request_id=f"demo-auction-{user}")
                say(_format_auction(user, result.auction))
    finally:
        server.stop(grace_s=1.0)


def _ads(
    config: TrainConfig, run_dir: Path, settings: Settings, say: Callable[[str], None]
) -> list[TrainResult]:
    """The BCE ad ranker, then the welfare-rankloss challenger, promoted only on held-out welfare."""
    bce_config = config.model_copy(
        update={"objective": ObjectiveConfig(name="bce"), "output_dir": run_dir / "ads-bce"}
    )
    trained = []
    for cfg in (bce_config, config):
        result = run_training(cfg)
        trained.append(result)
        shown = _summary(result, keys=("welfare_ratio", "expected_revenue", "auc"))
        say(f"      {cfg.objective.name if cfg.objective else ''}: {shown}")
    assert config.auctions is not None and config.auctions.simulate is not None
    held_out = run_dir / "held_out_auctions.parquet"  # fresh auctions of the same users and ads
    s = config.data.synthetic
    simulation = config.auctions.simulate.model_copy(update={"seed": config.auctions.simulate.seed + 1000})
    simulate_auctions(simulation, s.n_users, s.n_items, s.n_clusters, s.seed).write_parquet(held_out)
    configure_mlflow(settings, "rankforge-evaluation")
    challenger = trained[-1].registered
    if challenger is not None:
        decision = promote_if_better(
            config.registered_model,
            challenger.version,
            config.data,
            (Criterion.parse("welfare_ratio"),),
            ABConfig(n_resamples=200, auctions=str(held_out)),
        )
        verdict = "promoted" if decision.applied else "champion kept"
        say(f"      {config.registered_model} v{challenger.version} (welfare rankloss): {verdict}")
        for reason in decision.reasons:
            say(f"        - {reason}")
    return trained


def _format_auction(user_id: int, result: AuctionResult) -> str:
    ads = ", ".join(
        f"{a.ad_id}(bid {a.bid:.2f}, pCTR {a.pctr:.3f}, pays {a.price:.2f})" for a in result.ads[:3]
    )
    return f"      auction for user {user_id} [{result.ranker_version}, {result.rule}]: {ads} ..."


def _summary(result: TrainResult, keys: tuple[str, ...] | None = None) -> str:
    registered = (
        f"{result.registered.name} v{result.registered.version}" if result.registered else "not registered"
    )
    metrics = ", ".join(
        f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if keys is None or k in keys
    )
    return f"run {result.run_id}: {registered}; {metrics}"


def _format_answer(user_id: int, answer: RankResult, test_events: pl.DataFrame) -> str:
    held_out = set(test_events.filter(pl.col("user_id") == user_id)["item_id"].to_list())
    items = ", ".join(
        f"{i.item_id}{'*' if i.item_id in held_out else ''}({i.score:.2f})" for i in answer.items
    )
    versions = f"retrieval {answer.retrieval_version}, ranker {answer.ranker_version}"
    return f"      user {user_id}: {items}   [{versions}; * = the user's held-out item]"

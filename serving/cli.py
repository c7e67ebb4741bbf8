"""``rankforge serve``, ``rankforge query`` and ``rankforge materialize``.

rankforge materialize [--data-config data.yaml] [--version V] [--ttl-s S]
rankforge serve [--retrieval models:/rankforge-retrieval@champion|DIR] [--ranker ...] [--port 50051]
rankforge query --user 42 [--k 10] [--candidates 1,2,3] [--context user_pos_rate=0.5]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import grpc

from rankforge.errors import ConfigError
from rankforge.settings import Settings, configure_mlflow

DEFAULT_ADDRESS = "127.0.0.1:50051"


def register(subparsers: argparse._SubParsersAction) -> None:
    settings = Settings.from_env()

    serve = subparsers.add_parser("serve", help="run the gRPC retrieval-then-rank server")
    serve.add_argument("--retrieval", default="models:/rankforge-retrieval@champion", help="URI or dir")
    serve.add_argument("--ranker", default="models:/rankforge-ranker@champion", help="URI or bundle dir")
    serve.add_argument("--redis-url", default=settings.redis_url)
    serve.add_argument("--feature-prefix", default="rf:v1")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--workers", type=int, default=8)
    serve.add_argument("--redis-timeout-s", type=float, default=0.25)
    serve.add_argument("--refresh-interval-s", type=float, default=30.0, help="0 disables model refresh")
    serve.add_argument("--grace-s", type=float, default=5.0)
    serve.set_defaults(func=_serve)

    query = subparsers.add_parser("query", help="ask a running server for a user's top K")
    query.add_argument("--address", default=DEFAULT_ADDRESS)
    query.add_argument("--user", type=int, required=True, help="raw user id")
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--candidates", type=_id_list, default=None, help="comma-separated raw item ids")
    query.add_argument("--context", action="append", default=[], metavar="NAME=VALUE")
    query.add_argument("--timeout-s", type=float, default=2.0)
    query.set_defaults(func=_query)

    mat = subparsers.add_parser("materialize", help="write user/item features to Redis as a new version")
    mat.add_argument(
        "--data-config",
        type=Path,
        default=None,
        help="TOML/YAML/JSON data config, or a training config (its [data] section)",
    )
    mat.add_argument("--redis-url", default=settings.redis_url)
    mat.add_argument("--feature-prefix", default="rf:v1")
    mat.add_argument("--version", default=None, help="version name (default: UTC time + random suffix)")
    mat.add_argument("--ttl-s", type=int, default=7 * 24 * 3600)
    mat.set_defaults(func=_materialize)


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from exc


def _context(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--context expects NAME=NUMBER, got {pair!r}") from exc
    return out


def _serve(args: argparse.Namespace) -> int:
    from rankforge.serving.ranking_service import ServiceLimits
    from rankforge.serving.server import RankingServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if any(s.startswith("models:/") for s in (args.retrieval, args.ranker)):
        configure_mlflow(Settings.from_env(), "rankforge-serving")
    config = ServerConfig(
        retrieval=args.retrieval,
        ranker=args.ranker,
        redis_url=args.redis_url,
        feature_prefix=args.feature_prefix,
        host=args.host,
        port=args.port,
        workers=args.workers,
        refresh_interval_s=args.refresh_interval_s,
        grace_s=args.grace_s,
        limits=ServiceLimits(redis_timeout_s=args.redis_timeout_s),
    )
    server = RankingServer(config)
    server.install_signal_handlers()
    server.start()
    print(f"rankforge serve: listening on {server.address}", flush=True)
    server.wait()
    return 0


def _query(args: argparse.Namespace) -> int:
    from rankforge.serving.client import RankingClient

    with RankingClient(args.address, timeout_s=args.timeout_s) as client:
        try:
            result = client.rank(args.user, args.k, args.candidates, _context(args.context))
        except grpc.RpcError as exc:
            raise ConfigError(f"{exc.code().name}: {exc.details()}") from exc
    print(
        f"request {result.request_id}: retrieval {result.retrieval_version}, ranker "
        f"{result.ranker_version}, features {result.feature_version}, {result.n_ranked} ranked"
    )
    print(f"{'rank':>4}  {'item_id':>10}  {'score':>10}  {'retrieval':>10}")
    for rank, item in enumerate(result.items, 1):
        retrieval = f"{item.retrieval_score:10.4f}" if item.retrieval_score is not None else f"{'-':>10}"
        print(f"{rank:>4}  {item.item_id:>10}  {item.score:10.4f}  {retrieval}")
    return 0


def _materialize(args: argparse.Namespace) -> int:
    from rankforge.features.pipeline import DataConfig, prepare
    from rankforge.serving.feature_layout import KeyLayout
    from rankforge.serving.feature_reader import connect
    from rankforge.serving.feature_writer import FeatureWriter

    config = DataConfig() if args.data_config is None else DataConfig.from_file(args.data_config)
    data = prepare(config)
    client = connect(args.redis_url, timeout_s=5.0)
    report = FeatureWriter(client, KeyLayout(args.feature_prefix), ttl_s=args.ttl_s).write(data, args.version)
    print(json.dumps({"feature_version": report.version, "users": report.n_users, "items": report.n_items}))
    return 0

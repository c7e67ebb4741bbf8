"""``rankforge serve``, ``rankforge query`` and ``rankforge materialize``.

rankforge materialize [--data-config data.yaml] [--as-evaluated] [--version V] [--ttl-s S]
rankforge serve [--retrieval models:/rankforge-retrieval@champion|DIR] [--ranker ...] [--port 50051]
rankforge query --user 42 [--k 10] [--candidates 1,2,3] [--context user_pos_rate=0.5]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rankforge.errors import ConfigError
from rankforge.serving.redis_urls import masked
from rankforge.settings import Settings, configure_mlflow

if TYPE_CHECKING:
    import grpc

    from rankforge.features.pipeline import DataConfig

DEFAULT_ADDRESS = "127.0.0.1:50051"


FORMAT = argparse.ArgumentDefaultsHelpFormatter
#: --redis-url's help: its default comes from the environment and may hold a password, so it is
#: resolved when the command runs (redis_url) and never printed by --help.
REDIS_HELP = "online feature store (default: $RANKFORGE_REDIS_URL, else redis://127.0.0.1:6379/0)"


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_serve(subparsers)
    _add_auction(subparsers)
    _add_query(subparsers)
    _add_materialize(subparsers)


def redis_url(args: argparse.Namespace) -> str:
    """--redis-url, else the configured one (RANKFORGE_REDIS_URL)."""
    return args.redis_url or Settings.from_env().redis_url


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the gRPC retrieval-then-rank server",
        description="Serve the registry champions (or bundle directories) over gRPC: retrieval by the "
        "model's own scoring function, then the ONNX ranker, with features from Redis.",
        formatter_class=FORMAT,
    )
    serve.add_argument(
        "--retrieval", default="models:/rankforge-retrieval@champion", help="model URI or bundle dir"
    )
    serve.add_argument(
        "--ranker", default="models:/rankforge-ranker@champion", help="model URI or bundle dir"
    )
    serve.add_argument("--redis-url", default=None, help=REDIS_HELP)
    serve.add_argument("--feature-prefix", default="rf:v1", help="Redis key prefix written by materialize")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)"
    )
    serve.add_argument("--port", type=int, default=50051, help="TCP port (0: any free port)")
    serve.add_argument("--workers", type=int, default=8, help="request threads (per process)")
    serve.add_argument(
        "--include-seen",
        action="store_true",
        help="answer items users have already interacted with unless a request says otherwise "
        "(default: leave them out, as offline evaluation does)",
    )
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT): Python request handling is bound by "
        "one core per process, so use about one per core",
    )
    serve.add_argument("--redis-timeout-s", type=float, default=0.25, help="Redis budget per request")
    serve.add_argument("--refresh-interval-s", type=float, default=30.0, help="model refresh; 0 disables it")
    serve.add_argument("--grace-s", type=float, default=5.0, help="drain time for in-flight calls on SIGTERM")
    serve.add_argument(
        "--ad-ranker",
        default=None,
        help="the Auction RPC's pCTR model (e.g. models:/rankforge-ad-ranker@champion); unset: no ads mode",
    )
    serve.add_argument(
        "--auction-rule", choices=["gsp", "first_price"], default="gsp", help="how auction winners pay"
    )
    serve.add_argument(
        "--tls-cert", type=Path, default=None, help="server certificate chain (PEM): serve TLS"
    )
    serve.add_argument("--tls-key", type=Path, default=None, help="the certificate's private key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="require client certificates signed by this CA (mTLS)",
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="require 'authorization: Bearer <token>' on every RPC but health "
        "(default: $RANKFORGE_AUTH_TOKEN)",
    )
    serve.add_argument(
        "--insecure", action="store_true", help="allow plaintext on a non-loopback --host (not recommended)"
    )
    serve.set_defaults(func=_serve)


def _add_auction(subparsers: argparse._SubParsersAction) -> None:
    auction = subparsers.add_parser(
        "auction",
        help="run one ad auction on a running server",
        description="Send one Auction request (ads and their bids) to a running `rankforge serve "
        "--ad-ranker ...` and print the ads by eCPM with their pCTR and price.",
        formatter_class=FORMAT,
    )
    _client_options(auction)
    auction.add_argument(
        "--bids", type=_bid_list, required=True, help="comma-separated AD_ID:BID pairs, e.g. 5:1.2,9:0.8"
    )
    auction.set_defaults(func=_auction)


def _add_query(subparsers: argparse._SubParsersAction) -> None:
    query = subparsers.add_parser(
        "query",
        help="ask a running server for a user's top K",
        description="Send one Rank request to a running `rankforge serve` and print the ranking.",
        formatter_class=FORMAT,
    )
    _client_options(query)
    query.add_argument("--k", type=int, default=10, help="items to return")
    query.add_argument(
        "--candidates", type=_id_list, default=None, help="comma-separated item ids (integers or strings)"
    )
    query.add_argument(
        "--include-seen",
        action="store_true",
        help="also answer items the user has already interacted with (the server leaves them out by default)",
    )
    query.set_defaults(func=_query)


def _add_materialize(subparsers: argparse._SubParsersAction) -> None:
    mat = subparsers.add_parser(
        "materialize",
        help="write user/item features to Redis as a new version",
        description="Compute online features of every user and item of a log (by default the "
        "data the served models were trained on) and write them to Redis as a new version, "
        "switched to atomically once complete.",
        formatter_class=FORMAT,
    )
    mat.add_argument(
        "--data-config",
        type=Path,
        default=None,
        help="TOML/YAML/JSON data config, or a training config (its [data] section); default: the "
        "data the served models (--retrieval, --ranker) were trained on, as their bundles record it",
    )
    mat.add_argument(
        "--retrieval", default="models:/rankforge-retrieval@champion", help="served retrieval model"
    )
    mat.add_argument("--ranker", default="models:/rankforge-ranker@champion", help="served ranker")
    mat.add_argument(
        "--as-evaluated",
        action="store_true",
        help="write the training part of the log (the state the offline metrics were computed "
        "from) instead of the whole log (what a live service needs: every user and item, the "
        "held-out part included; see rankforge.features.serving_snapshot)",
    )
    mat.add_argument("--redis-url", default=None, help=REDIS_HELP)
    mat.add_argument("--feature-prefix", default="rf:v1", help="Redis key prefix the server reads")
    mat.add_argument("--version", default=None, help="version name (default: UTC time + random suffix)")
    mat.add_argument(
        "--ttl-s",
        type=int,
        default=7 * 24 * 3600,
        help="how long the version this one replaces stays readable (the current version never expires)",
    )
    mat.set_defaults(func=_materialize)


def _client_options(parser: argparse.ArgumentParser) -> None:
    """What every request command takes: where the server is, whom the request is for, and how
    to reach it (deadline, TLS, token)."""
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="host:port of `rankforge serve`")
    parser.add_argument(
        "--user", required=True, help="raw user id (a log with string ids: the id as written, e.g. u_95)"
    )
    parser.add_argument(
        "--context", action="append", default=[], metavar="NAME=VALUE", help="request context"
    )
    parser.add_argument("--timeout-s", type=float, default=2.0, help="request deadline")
    parser.add_argument(
        "--tls-ca", type=Path, default=None, help="CA that signed the server's certificate: use TLS"
    )
    parser.add_argument("--client-cert", type=Path, default=None, help="client certificate (PEM) for mTLS")
    parser.add_argument("--client-key", type=Path, default=None, help="the client certificate's key (PEM)")
    parser.add_argument("--server-name", default=None, help="name to check the server certificate against")
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="bearer token file (default: $RANKFORGE_AUTH_TOKEN)",
    )


def _client(args: argparse.Namespace):
    from rankforge.serving.client import RankingClient
    from rankforge.serving.security import read_token

    return RankingClient(
        args.address,
        timeout_s=args.timeout_s,
        tls_ca=args.tls_ca,
        token=read_token(args.auth_token_file),
        client_cert=args.client_cert,
        client_key=args.client_key,
        server_name=args.server_name,
    )


def _redis_answers(url: str) -> bool:
    """Whether the feature store answers; a plain URL at a node of a Redis Cluster is a one-line
    error (every key of another node would answer MOVED)."""
    import redis
    from redis.cluster import RedisCluster

    from rankforge.serving.feature_reader import connect

    client = connect(url, timeout_s=1.0)  # a URL no client can use: its one-line ConfigError
    try:
        if not client.ping():
            return False
        node = not isinstance(client, RedisCluster) and bool(client.info("cluster").get("cluster_enabled"))
    except (redis.RedisError, OSError, ValueError):
        return False
    if node:
        raise ConfigError(
            f"Redis at {masked(url)} is a node of a Redis Cluster: give the cluster as "
            "rediscluster://host:port[,host:port...]"
        )
    return True


def _id_list(text: str) -> list[str]:
    """Comma-separated item ids as the log wrote them; sent as keys, which the server reads with
    the model's own id type (a string-id model hashes "196" like any string)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated item ids, got {text[:40]!r}")
    return parts


def _bid_list(text: str) -> list[tuple[int, float]]:
    out = []
    for part in (p for p in text.split(",") if p.strip()):
        ad, sep, bid = part.partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((int(ad), float(bid)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected AD_ID:BID pairs, got {part[:40]!r}") from exc
    return out


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


def _tls(args: argparse.Namespace):
    from rankforge.serving.security import TlsConfig

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS first)")
        return None
    return TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)


def _serve(args: argparse.Namespace) -> int:
    from rankforge.serving.ranking_service import ServiceLimits
    from rankforge.serving.security import read_token
    from rankforge.serving.server import RankingServer, ServerConfig, exit_when_stopped

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if any(s and s.startswith("models:/") for s in (args.retrieval, args.ranker, args.ad_ranker)):
        configure_mlflow(Settings.from_env(), "rankforge-serving", expect_existing=True)
    config = ServerConfig(
        retrieval=args.retrieval,
        ranker=args.ranker,
        redis_url=redis_url(args),
        feature_prefix=args.feature_prefix,
        host=args.host,
        port=args.port,
        workers=args.workers,
        refresh_interval_s=args.refresh_interval_s,
        grace_s=args.grace_s,
        limits=ServiceLimits(redis_timeout_s=args.redis_timeout_s),
        ad_ranker=args.ad_ranker,
        auction_rule=args.auction_rule,
        tls=_tls(args),
        auth_token=read_token(args.auth_token_file),
        allow_insecure=args.insecure,
        reuse_port=args.processes > 1,
        exclude_seen=not args.include_seen,
    )
    try:
        server = RankingServer(config)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise ConfigError(f"cannot listen on {args.host}:{args.port} (in use? try --port): {exc}") from exc
    if not _redis_answers(redis_url(args)):
        print(
            f"rankforge serve: warning: Redis at {masked(redis_url(args))} is not answering; requests "
            "fail with UNAVAILABLE until it does (start redis-server, then rankforge materialize)",
            file=sys.stderr,
            flush=True,
        )
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if args.processes > 1 and args.port == 0:
        raise ConfigError("--processes > 1 needs a fixed --port (the processes share it)")
    workers = _start_workers(replace(config, reuse_port=True), args.processes - 1)
    server.install_signal_handlers()
    server.start()
    print(
        f"rankforge serve: listening on {server.address}"
        + (f" ({args.processes} processes)" if workers else ""),
        flush=True,
    )
    try:
        server.wait()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=10)
    exit_when_stopped(server)  # does not return: a handler the grace did not end is not waited for
    return 0


def _start_workers(config: object, count: int) -> list:
    """``count`` more server processes on the same port (spawned: no forked gRPC/ORT state)."""
    import multiprocessing

    from rankforge.serving.server import serve_forever

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=serve_forever, args=(config,), daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def _id(text: str) -> int | str:
    """An integer id, or a string id ("u_95") as the log wrote it."""
    try:
        return int(text)
    except ValueError:
        return text


def _query(args: argparse.Namespace) -> int:
    import grpc

    if not args.user.strip():
        raise ConfigError(f"--user is empty: give the user's id as the log wrote it, got {args.user!r}")
    with _client(args) as client:
        try:
            result = client.rank(
                args.user.strip(),  # as a key: the server reads it with the model's own id type
                args.k,
                args.candidates,
                _context(args.context),
                exclude_seen=False if args.include_seen else None,
            )
        except grpc.RpcError as exc:
            raise _rpc_error(exc, args.address) from exc
    print(
        f"request {result.request_id}: retrieval {result.retrieval_version}, ranker "
        f"{result.ranker_version}, features {result.feature_version}, {result.n_ranked} ranked"
    )
    keyed = any(item.item_key for item in result.items)
    print(f"{'rank':>4}  {'item':>10}  {'score':>10}  {'retrieval':>10}")
    for rank, item in enumerate(result.items, 1):
        retrieval = f"{item.retrieval_score:10.4f}" if item.retrieval_score is not None else f"{'-':>10}"
        print(f"{rank:>4}  {item.item_key if keyed else item.item_id:>10}  {item.score:10.4f}  {retrieval}")
    return 0


def _rpc_error(exc: grpc.RpcError, address: str) -> ConfigError:
    import grpc

    hint = ""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        hint = f" (is `rankforge serve` running at {address}? see --address)"
    return ConfigError(f"{exc.code().name}: {exc.details()}{hint}")


def _auction(args: argparse.Namespace) -> int:
    import grpc

    with _client(args) as client:
        try:
            user = _id(args.user)
            if isinstance(user, str):
                raise ConfigError(f"auction requests take integer user ids, got {args.user[:40]!r}")
            result = client.auction(user, args.bids, _context(args.context))
        except grpc.RpcError as exc:
            raise _rpc_error(exc, args.address) from exc
    print(f"request {result.request_id}: ad ranker {result.ranker_version}, rule {result.rule}")
    print(f"{'pos':>3}  {'ad_id':>8}  {'bid':>8}  {'pctr':>8}  {'ecpm':>8}  {'price':>8}")
    for pos, ad in enumerate(result.ads, 1):
        print(f"{pos:>3}  {ad.ad_id:>8}  {ad.bid:8.3f}  {ad.pctr:8.4f}  {ad.ecpm:8.4f}  {ad.price:8.4f}")
    return 0


def _materialize(args: argparse.Namespace) -> int:
    from rankforge.features.pipeline import DataConfig, prepare
    from rankforge.features.serving_snapshot import serving_snapshot
    from rankforge.serving.feature_layout import KeyLayout
    from rankforge.serving.feature_reader import connect
    from rankforge.serving.feature_writer import FeatureWriter

    if not _redis_answers(redis_url(args)):
        raise ConfigError(
            f"Redis at {masked(redis_url(args))} is not answering: start redis-server, or point --redis-url "
            "(RANKFORGE_REDIS_URL) at one"
        )
    config = (
        _served_data_config(args.retrieval, args.ranker)
        if args.data_config is None
        else DataConfig.from_file(args.data_config)
    )
    data = prepare(config) if args.as_evaluated else serving_snapshot(config)
    client = connect(redis_url(args), timeout_s=5.0)
    report = FeatureWriter(client, KeyLayout(args.feature_prefix), ttl_s=args.ttl_s).write(data, args.version)
    print(
        json.dumps(
            {
                "feature_version": report.version,
                "users": report.n_users,
                "items": report.n_items,
                "snapshot": "training part (as evaluated)" if args.as_evaluated else "whole log",
                "data": config.describe(),
            }
        )
    )
    return 0


def _served_data_config(*uris: str) -> DataConfig:
    """The data config the served models were trained on (recorded in their bundles), or a
    one-line error naming what to pass."""
    from rankforge.bundles.registry import opened_bundle
    from rankforge.errors import RankforgeError
    from rankforge.features.pipeline import DataConfig
    from rankforge.settings import Settings, configure_mlflow

    if any(uri.startswith("models:/") for uri in uris):
        configure_mlflow(Settings.from_env(), "rankforge-serving", expect_existing=True)
    recorded = {}
    for uri in uris:
        try:
            with opened_bundle(uri) as bundle:
                recorded[uri] = bundle.manifest.data_config
        except RankforgeError as exc:
            raise ConfigError(
                f"no --data-config given and the served model {uri} cannot be read ({str(exc)[:120]}): "
                "pass --data-config (the training config of the served models)"
            ) from exc
    missing = [uri for uri, config in recorded.items() if not config]
    if missing:
        raise ConfigError(
            f"no --data-config given and {', '.join(missing)} records no data config (exported by an "
            "older version or from a prepared directory): pass --data-config"
        )
    configs = list(recorded.values())
    if any(config != configs[0] for config in configs[1:]):
        raise ConfigError(
            f"no --data-config given and the served models were trained on different data "
            f"({' vs '.join(DataConfig(**c).describe() for c in configs)}): pass --data-config"
        )
    return DataConfig(**configs[0])

"""Reliability round three (issue #19): the probes that stalled a server or served wrong answers as
OK, each reproduced against a real server, a real Redis and real files."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rankforge.errors import ConfigError
from rankforge.serving.client import RankingClient
from rankforge.serving.ranking_service import RankError, RankingService

pytestmark = pytest.mark.redis


def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0).status


def test_a_huge_candidate_list_is_refused_before_any_per_item_work(server, user_id) -> None:
    """100,000 keys with one duplicate stalled a core for 110 s (a list scan per key before the
    size check); the size is checked first now, and duplicates are counted once."""
    keys = [f"sku-{i}" for i in range(100_000)] + ["sku-7"]
    with RankingClient(server.address, timeout_s=10.0) as client:
        err = _status(lambda: client.rank(user_id, k=3, candidates=keys))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 10000 candidates, got 100001" in err.details()
        err = _status(lambda: client.rank(user_id, k=3, candidates=["same"] * 10_000))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "duplicate candidate item keys: 'same'" in err.details()
        # and several at once leave the server answering normal requests and health checks
        with ThreadPoolExecutor(8) as pool:
            floods = [pool.submit(client.rank, user_id, 3, keys) for _ in range(8)]
            assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
            assert client.rank(user_id, k=3).items
            for flood in floods:
                assert flood.exception().code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_never_starved_by_rank_work(make_server, feature_version, user_id) -> None:
    """With every Rank slot busy and as many calls waiting for one, one more Rank answers
    RESOURCE_EXHAUSTED at once, health checks still answer (they have worker threads of their
    own), and the waiting calls are served once slots free up."""
    server = make_server(workers=2)
    release = threading.Event()
    entered = threading.Semaphore(0)
    original = server.service._rank

    def slow_rank(request, request_id, context):
        entered.release()
        release.wait(30)
        return original(request, request_id, context)

    server.service._rank = slow_rank  # type: ignore[method-assign]
    with RankingClient(server.address, timeout_s=30.0) as client, ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client.rank, user_id, 3) for _ in range(2)]
        for _ in range(2):
            assert entered.acquire(timeout=10)
        waiting = [pool.submit(client.rank, user_id, 3) for _ in range(2)]
        deadline = time.monotonic() + 10
        while server.service._waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.service._waiting == 2
        err = _status(lambda: client.rank(user_id, k=3, timeout_s=5.0))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in err.details()
        for service in ("", "rankforge.v1.RankingService"):
            assert _health(server.address, service) == health_pb2.HealthCheckResponse.SERVING
        release.set()
        assert all(f.result().items for f in running + waiting)
    assert server.service.outcomes["RESOURCE_EXHAUSTED"] == 1


def _idle_calls(address: str, method: str, n: int) -> tuple[grpc.Channel, threading.Event]:
    """``n`` unary calls to ``method`` that send their headers and never their message, no
    deadline (a client-streaming call on a unary method, its request iterator blocked)."""
    channel = grpc.insecure_channel(address)
    never = threading.Event()

    def blocked():
        never.wait()
        yield b""

    call = channel.stream_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
    for _ in range(n):
        call.future(blocked())
    return channel, never


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_idle_calls_hold_no_worker_and_never_starve_health_or_rank(
    make_server, feature_version, user_id, token
) -> None:
    """Many more calls than worker threads send headers and never a message (with auth on, and no
    token): health checks and valid Rank calls still answer at once."""
    server = make_server(workers=2, auth_token=token)
    idle = 3 * (2 * server.config.workers + 2)  # 18 held every thread of the thread-pool server
    channel, never = _idle_calls(server.address, "/rankforge.v1.RankingService/Rank", idle)
    try:
        time.sleep(0.5)  # the calls have reached the server
        started = time.monotonic()
        for service in ("", "rankforge.v1.RankingService"):
            assert _health(server.address, service) == health_pb2.HealthCheckResponse.SERVING
        with RankingClient(server.address, timeout_s=5.0, token=token) as client:
            for _ in range(3):
                assert client.rank(user_id, k=3).items
        assert time.monotonic() - started < 5.0
        # with a token required, a tokenless call is still refused at once
        if token:
            err = _status(lambda: RankingClient(server.address, timeout_s=5.0).rank(user_id, k=3))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        never.set()
        channel.close()


class _GoneContext:
    """A servicer context whose caller has cancelled (or whose deadline is far away)."""

    def __init__(self, active: bool, remaining: float | None) -> None:
        self._active, self._remaining = active, remaining

    def is_active(self) -> bool:
        return self._active

    def time_remaining(self) -> float | None:
        return self._remaining


def test_work_stops_between_stages_once_the_caller_is_gone() -> None:
    with pytest.raises(RankError) as err:
        RankingService._check_deadline(_GoneContext(active=False, remaining=10.0))  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.CANCELLED
    with pytest.raises(RankError) as err:
        RankingService._check_deadline(_GoneContext(active=True, remaining=0.0))  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    RankingService._check_deadline(_GoneContext(active=True, remaining=None))  # type: ignore[arg-type]


@pytest.mark.slow
def test_sigterm_ends_the_process_within_the_grace_while_a_request_is_stuck(
    bundles, stalled_redis, user_id, tmp_path
) -> None:
    """A request blocked in a feature read that outlives the drain grace no longer keeps a
    stopped server's process alive."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "rankforge.cli", "serve", "--port", str(port),
        "--retrieval", str(bundles.retrieval), "--ranker", str(bundles.ranker),
        "--redis-url", stalled_redis, "--redis-timeout-s", "60", "--grace-s", "1",
        "--refresh-interval-s", "0",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in server.stdout.readline()
        with RankingClient(f"127.0.0.1:{port}", timeout_s=120.0) as client, ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(client.rank, user_id, 3)
            time.sleep(1.0)  # the request is now waiting on the stalled feature store
            assert not stuck.done()
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=20) == 0  # not the 60 s of the blocked read
            assert stuck.exception(timeout=20) is not None
        assert "still running after the drain grace" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()


# -- a bundle is verified at load (item 2) -----------------------------------------------------


@pytest.fixture
def indexed_bundle(serving_data, tmp_path) -> Path:
    """A retrieval bundle with an HNSW index whose export recorded recall@10 = 1.0."""
    import torch

    from rankforge.bundles.ann_index import IndexConfig
    from rankforge.bundles.export import build_retrieval_bundle
    from rankforge.models.inputs import sparse_features
    from rankforge.models.two_tower import TwoTower

    torch.manual_seed(0)
    d = serving_data
    model = TwoTower(sparse_features(d.inputs, "user"), sparse_features(d.inputs, "item"), 8, (16, 8))
    path = tmp_path / "indexed"
    path.mkdir()
    build_retrieval_bundle(
        model, d, str(path), index=IndexConfig(kind="hnsw", recall_k=10, recall_queries=80)
    )
    return path


def _edit_manifest(bundle: Path, drop: tuple[str, ...] = (), **index: object) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["index"].update(index)
    for key in drop:
        del manifest["index"][key]
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _replace_index(bundle: Path, vectors: np.ndarray, kind: str = "hnsw", codes: str = "flat") -> None:
    """A parseable index over other vectors, re-recorded in the manifest as if exported with it."""
    from rankforge.bundles.ann_index import INDEX_FILE, IndexConfig, build
    from rankforge.bundles.bundle import seal

    config = IndexConfig(kind=kind, nprobe=4, ivf_codes=codes)
    faiss.write_index(build(vectors, config), str(bundle / INDEX_FILE))
    seal(bundle)  # not a damaged file: a consistent, wrong bundle


@pytest.mark.parametrize(
    "damage, message",
    [
        ("shuffled rows", "does not match the bundle's item vectors"),
        ("another index", "does not match the bundle's item vectors"),
        ("ef_search 0", r"ef_search must be an integer in \[1, 65536\], got '0'"),
        ("ef_search text", "ef_search must be an integer in"),
        ("ef_search 2**31", r"ef_search must be an integer in \[1, 65536\], got '2147483648'"),
        ("ef_search 1e8", r"ef_search must be an integer in \[1, 65536\], got '100000000'"),
        ("no recall record", "has no recall_at_K measured at export"),
        ("file outside", "is not a file inside the bundle"),
        ("kind mismatch", "the manifest says hnsw, the file holds"),
        ("codes mismatch", "the manifest says codes 'flat', the file holds IndexRefineFlat"),
        ("refine factor below 1", "refine_factor must be a number >= 1, got '0.5'"),
        ("bytes changed", "differs from the file exported with it"),
    ],
)
def test_a_bundle_whose_index_does_not_fit_its_vectors_is_refused(indexed_bundle, damage, message) -> None:
    from rankforge.bundles.bundle import load_bundle
    from rankforge.bundles.runtime import load_retrieval
    from rankforge.errors import DataError

    vectors = np.load(indexed_bundle / "item_embeddings.npy")
    load_retrieval(load_bundle(indexed_bundle), "v1")  # intact: loads
    if damage == "shuffled rows":
        _replace_index(indexed_bundle, vectors[np.random.default_rng(0).permutation(len(vectors))])
    elif damage == "another index":
        _replace_index(indexed_bundle, np.random.default_rng(1).normal(size=vectors.shape).astype(np.float32))
    elif damage == "ef_search 0":
        _edit_manifest(indexed_bundle, ef_search=0)
    elif damage == "ef_search text":
        _edit_manifest(indexed_bundle, ef_search="fast")
    elif damage == "ef_search 2**31":
        _edit_manifest(indexed_bundle, ef_search=2**31)
    elif damage == "ef_search 1e8":
        _edit_manifest(indexed_bundle, ef_search=100_000_000)
    elif damage == "no recall record":
        _edit_manifest(indexed_bundle, drop=("recall_at_10",))
    elif damage == "file outside":
        _edit_manifest(indexed_bundle, file="/etc/hostname")
    elif damage == "kind mismatch":
        _replace_index(indexed_bundle, vectors, kind="ivf")
        _edit_manifest(indexed_bundle, kind="hnsw")
    elif damage == "codes mismatch":  # 8-bit cells where the manifest promises the vectors
        _replace_index(indexed_bundle, vectors, kind="ivf", codes="sq8")
        _edit_manifest(indexed_bundle, kind="ivf", nprobe=4, codes="flat")
    elif damage == "refine factor below 1":  # fewer candidates re-scored than answered
        _replace_index(indexed_bundle, vectors, kind="ivf", codes="sq8")
        _edit_manifest(indexed_bundle, kind="ivf", nprobe=4, codes="sq8", refine_factor=0.5)
    else:  # 4 KB of the item matrix overwritten after export
        path = indexed_bundle / "item_embeddings.npy"
        raw = bytearray(path.read_bytes())
        raw[-min(4096, len(raw) - 200) :] = b"\xff" * min(4096, len(raw) - 200)
        path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=message):
        load_retrieval(load_bundle(indexed_bundle), "v2")


def test_a_refused_bundle_keeps_the_old_model_and_reports_not_serving(
    make_server, indexed_bundle, feature_version, user_id, tmp_path, caplog
) -> None:
    import os

    link = tmp_path / "current"
    link.symlink_to(indexed_bundle)
    srv = make_server(retrieval=link)
    version = srv.watcher.models.retrieval.version
    shuffled = tmp_path / "shuffled"
    shutil.copytree(indexed_bundle, shuffled)
    vectors = np.load(shuffled / "item_embeddings.npy")
    _replace_index(shuffled, vectors[np.random.default_rng(0).permutation(len(vectors))])
    staged = tmp_path / "current.new"
    staged.symlink_to(shuffled)
    os.replace(staged, link)
    with caplog.at_level(logging.ERROR):
        assert srv.watcher.refresh() is False
        assert srv.watcher.refresh() is False
    assert (
        len([r for r in caplog.records if "does not match the bundle's item vectors" in r.getMessage()]) == 1
    )
    assert _health(srv.address, srv.MODELS_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING
    with RankingClient(srv.address) as client:
        assert client.rank(user_id, k=3).retrieval_version == version


def test_a_registered_bundle_changed_after_registration_is_refused_at_download(
    bundles, rankforge_home, tmp_path
) -> None:
    from urllib.parse import urlparse

    import mlflow

    from rankforge.bundles.registry import download_bundle, log_and_register
    from rankforge.errors import DataError
    from rankforge.settings import Settings, configure_mlflow

    configure_mlflow(Settings.from_env(), "digest-test")
    with mlflow.start_run() as run:
        log_and_register(bundles.retrieval, "rf-digest", alias="champion")
    download_bundle("models:/rf-digest@champion", tmp_path / "ok")  # intact: fine
    stored = next(Path(urlparse(run.info.artifact_uri).path).rglob("item_embeddings.npy"))
    raw = bytearray(stored.read_bytes())
    raw[-64:] = b"\x00" * 64
    stored.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="differs from the one registered"):
        download_bundle("models:/rf-digest@champion", tmp_path / "bad")


# -- Redis Cluster faults and credentials (items 3 and 6) ----------------------------------------


@pytest.fixture
def secret_cluster():
    from rankforge.infra.redis_cluster import start_cluster

    cluster = start_cluster(3, password="s3cret-pw")
    yield cluster
    cluster.stop()


def test_a_cluster_with_credentials_serves_and_a_cluster_down_answers_unavailable(
    secret_cluster, make_server, serving_data, layout, user_id, caplog
) -> None:
    """``rediscluster://:pw@host:port,...`` authenticates (the password no longer lands in the host
    name), and CLUSTERDOWN (a slot no node serves) is UNAVAILABLE, which clients retry, not
    INTERNAL logged at ERROR per request."""
    from rankforge.serving.feature_reader import connect
    from rankforge.serving.feature_writer import FeatureWriter

    cluster = secret_cluster
    FeatureWriter(connect(cluster.url, timeout_s=2.0), layout, ttl_s=120).write(serving_data)
    server = make_server(redis_url=cluster.url)
    with RankingClient(server.address) as client:
        assert len(client.rank(user_id, k=3).items) == 3
        # take the slot of the version pointer (read by every request) away from its node
        owner = cluster.node(cluster.ports[0])
        slot = owner.cluster("keyslot", layout.current)
        for port in cluster.ports:
            node = cluster.node(port)
            if any(slot in range(lo, hi + 1) for lo, hi, *_ in _slot_ranges(node, port)):
                node.cluster("delslots", slot)
        with caplog.at_level(logging.INFO):
            err = _status(lambda: client.rank(user_id, k=3))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "Redis Cluster unavailable" in err.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "s3cret-pw" not in err.details()


def _slot_ranges(node, port: int) -> list[tuple[int, int]]:
    """The slot ranges ``node`` (on ``port``) serves itself."""
    ranges = []
    for lo, hi, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
        if int(primary[1]) == port:
            ranges.append((int(lo), int(hi)))
    return ranges


def test_urls_never_show_their_password() -> None:
    from rankforge.serving.redis_urls import masked, parse_cluster

    assert masked("redis://user:hunter2@db.internal:6379/0") == "redis://user:***@db.internal:6379/0"
    assert masked("redis://:hunter2@db:6379") == "redis://:***@db:6379"
    assert masked("rediss://hunter2@db:6380/1") == "rediss://***@db:6380/1"
    assert masked("redis://db:6379/0") == "redis://db:6379/0"
    assert masked("rediscluster://u:p%40ss@h1:7000,h2:7001") == "rediscluster://u:***@h1:7000,h2:7001"
    parsed = parse_cluster("rediscluster://u:p%40ss@h1:7000,h2:7001/")
    assert parsed.nodes == [("h1", 7000), ("h2", 7001)] and (parsed.username, parsed.password) == (
        "u",
        "p@ss",
    )
    assert parse_cluster("rediscluster://:pw@h:1").username is None
    # a password as a query argument (redis-py reads it), or holding an unencoded '/', '?' or '@'
    assert masked("redis://db:6379/0?password=hunter2") == "redis://db:6379/0?password=***"
    assert masked("redis://db/0?db=1&PASSWORD=p@ss&x=1") == "redis://db/0?db=1&PASSWORD=***&x=1"
    assert masked("redis://:hun/ter2@db:6379/0") == "redis://:***@db:6379/0"
    assert masked("redis://user:hu?n@ter/2@db:6379/0") == "redis://user:***@db:6379/0"
    for url in ("redis://db:6379/0?password=hunter2", "redis://:hun/ter2@db:6379/0"):
        assert "hunter2" not in masked(url) and "ter2" not in masked(url)


def test_redis_urls_no_client_can_use_are_one_line_before_anything_else() -> None:
    from rankforge.errors import ConfigError
    from rankforge.serving.feature_reader import connect

    with pytest.raises(ConfigError, match=r"^Redis URL 'http://127.0.0.1:6379': expected one of redis://"):
        connect("http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match=r"is not usable: .*unexpected keyword argument 'shard'") as err:
        connect("redis://:hunter2@127.0.0.1:6379/0?shard=3")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"is not usable: Invalid value for 'socket_timeout'"):
        connect("redis://127.0.0.1:6379/0?socket_timeout=soon&password=hunter2")


def test_cli_output_masks_the_password_of_the_redis_url(closed_port, monkeypatch, capsys) -> None:
    """materialize's and serve's "not answering" messages, from --redis-url or RANKFORGE_REDIS_URL."""
    from rankforge.cli import main

    url = f"redis://admin:topsecret@127.0.0.1:{closed_port}/0"
    assert main(["materialize", "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert "topsecret" not in err and "admin:***@127.0.0.1" in err
    monkeypatch.setenv("RANKFORGE_REDIS_URL", url)
    assert main(["materialize"]) == 2
    assert "topsecret" not in capsys.readouterr().err
    # a password as a query argument or holding an unencoded '/'; an unknown query argument
    for url in (
        f"redis://127.0.0.1:{closed_port}/0?password=topsecret",
        f"redis://:top/secret@127.0.0.1:{closed_port}/0",
        f"redis://:topsecret@127.0.0.1:{closed_port}/0?shard=1",
        "http://:topsecret@127.0.0.1:6379",
    ):
        assert main(["materialize", "--redis-url", url]) == 2
        err = capsys.readouterr().err
        assert "secret" not in err and err.count("\n") == 1, err


def test_health_recovers_when_the_alias_moves_back_to_the_served_version(
    make_server, bundles, feature_version, user_id, rankforge_home, tmp_path, caplog
) -> None:
    """#19 item 4: champion -> a broken version (refused, NOT_SERVING) -> back to the version being
    served: the models health is SERVING again and the rollback is logged."""
    from urllib.parse import urlparse

    import mlflow
    from mlflow import MlflowClient

    from rankforge.bundles.registry import log_and_register
    from rankforge.settings import Settings, configure_mlflow

    configure_mlflow(Settings.from_env(), "serving-rollback-test")
    with mlflow.start_run():
        log_and_register(bundles.ranker, "rf-rollback", alias="champion")
    twin = tmp_path / "twin"
    shutil.copytree(bundles.ranker, twin)
    (twin / "NOTES.txt").write_text("a second version\n")
    with mlflow.start_run() as run:
        log_and_register(twin, "rf-rollback")
    onnx = next(Path(urlparse(run.info.artifact_uri).path).rglob("ranker.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:100])
    srv = make_server(ranker="models:/rf-rollback@champion")
    client = MlflowClient()
    client.set_registered_model_alias("rf-rollback", "champion", "2")
    assert srv.watcher.refresh() is False
    assert _health(srv.address, srv.MODELS_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING
    client.set_registered_model_alias("rf-rollback", "champion", "1")
    with caplog.at_level(logging.INFO, logger="rankforge.serving.model_source"):
        assert srv.watcher.refresh() is False  # nothing to load: version 1 is being served
    assert _health(srv.address, srv.MODELS_HEALTH) == health_pb2.HealthCheckResponse.SERVING
    assert any("back at the served version rf-rollback/1" in r.getMessage() for r in caplog.records)
    with RankingClient(srv.address) as rank_client:
        assert rank_client.rank(user_id, k=3).ranker_version == "rf-rollback/1"


# -- authentication (item 5) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("  ", "is empty or blank"),
        ("\t\n", "is empty or blank"),
        ("to ken", "whitespace"),
        ("tökén", "non-ASCII"),
    ],
)
def test_an_unusable_token_is_refused_from_every_source(value, problem, tmp_path, monkeypatch) -> None:
    from rankforge.errors import ConfigError
    from rankforge.serving.security import read_token

    monkeypatch.setenv("RANKFORGE_AUTH_TOKEN", value)
    with pytest.raises(ConfigError, match=problem):
        read_token(None)
    path = tmp_path / "token"
    path.write_text(value, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        read_token(path)
    monkeypatch.delenv("RANKFORGE_AUTH_TOKEN")
    assert read_token(None) is None  # not given at all: a server without a token (loopback)


def test_serve_with_a_blank_token_does_not_start(bundles, monkeypatch, capsys) -> None:
    from rankforge.cli import main

    monkeypatch.setenv("RANKFORGE_AUTH_TOKEN", "  ")
    args = ["serve", "--retrieval", str(bundles.retrieval), "--ranker", str(bundles.ranker), "--port", "0"]
    assert main(args) == 2
    assert "RANKFORGE_AUTH_TOKEN is empty or blank" in capsys.readouterr().err


def test_rejected_calls_are_counted_and_logged_without_the_token_and_the_scheme_is_case_insensitive(
    make_server, feature_version, user_id, caplog
) -> None:
    from rankforge.serving.proto import ranking_pb2, ranking_pb2_grpc

    server = make_server(auth_token="s3cret-token")
    interceptor = server.auth
    request = ranking_pb2.RankRequest(user_id=user_id, k=3)
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.WARNING):
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for header in ("bearer s3cret-token", "BEARER  s3cret-token", "Bearer s3cret-token"):
            assert stub.Rank(request, metadata=[("authorization", header)], timeout=5).items
        for header in ("Bearer wrong-guess-123", "Basic s3cret-token", "s3cret-token"):
            err = _status(lambda h=header: stub.Rank(request, metadata=[("authorization", h)], timeout=5))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert interceptor.rejected == 3
    logged = [r.getMessage() for r in caplog.records if "without a valid bearer token" in r.getMessage()]
    assert len(logged) == 1 and "RankingService/Rank" in logged[0]  # rate-limited: one line
    assert not any("wrong-guess-123" in r.getMessage() or "s3cret" in r.getMessage() for r in caplog.records)


# -- temporary downloads (item 7) ---------------------------------------------------------------


def test_downloads_are_removed_on_swap_on_exit_and_after_promote(
    make_server, bundles, feature_version, rankforge_home, small_data, tmp_path, monkeypatch
) -> None:
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from rankforge.bundles.registry import log_and_register
    from rankforge.features.pipeline import DataConfig, SyntheticConfig
    from rankforge.features.synthetic import GENRES_FEATURE
    from rankforge.pipelines.ab_compare import ABConfig
    from rankforge.pipelines.promote import promote_if_better
    from rankforge.settings import Settings, configure_mlflow

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    left = lambda: sorted(p.name for p in temp.iterdir())  # noqa: E731
    configure_mlflow(Settings.from_env(), "downloads-test")
    for bundle, alias in ((bundles.retrieval, "champion"), (bundles.retrieval_b, None)):
        with mlflow.start_run():
            log_and_register(bundle, "rf-tmp", alias=alias)
    server = make_server(retrieval="models:/rf-tmp@champion")
    assert len(left()) == 1  # the served retrieval model's download
    first = left()
    MlflowClient().set_registered_model_alias("rf-tmp", "champion", "2")
    assert server.watcher.refresh() is True
    assert len(left()) == 1 and left() != first  # the replaced download is gone
    server.stop(0)
    assert left() == []  # and the served one at exit

    # a server that cannot start (its port taken; a Redis URL no client reads) leaves nothing
    taken = make_server(retrieval="models:/rf-tmp@champion")
    assert len(left()) == 1
    for overrides in ({"port": taken.port}, {"redis_url": "http://127.0.0.1:6379"}):
        with pytest.raises((RuntimeError, ConfigError)):
            make_server(retrieval="models:/rf-tmp@champion", **overrides)
        assert len(left()) == 1  # only the running server's download
    taken.stop(0)
    assert left() == []

    MlflowClient().set_registered_model_alias("rf-tmp", "champion", "1")
    data = DataConfig(synthetic=SyntheticConfig(n_users=50, n_items=80), features=[GENRES_FEATURE])
    promote_if_better("rf-tmp", 2, data, config=ABConfig(n_resamples=50))
    assert left() == []  # promote compared two downloads and removed both


# -- context values (item 8) --------------------------------------------------------------------


def test_a_context_value_that_overflows_once_normalised_is_invalid_not_internal() -> None:
    from rankforge.features.feature_spec import ContextInput
    from rankforge.serving.ranking_service import context_value

    tight = ContextInput("price", "none", shift=0.0, scale=1e-3)  # a tiny spread in training
    assert context_value(tight, 2.0) == pytest.approx(2000.0)
    with pytest.raises(RankError) as err:
        context_value(tight, 3e38)  # a valid float32, infinite once normalised
    assert (
        err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "out of the model's range" in err.value.message
    )
    bounded = ContextInput("hour", minimum=0.0, maximum=23.0)
    with pytest.raises(RankError, match="must be <= 23"):
        context_value(bounded, 24.0)


def test_training_rows_outside_a_declared_range_are_refused() -> None:
    import polars as pl

    from rankforge.errors import DataError
    from rankforge.features.declared_features import fit_context
    from rankforge.features.feature_spec import Feature

    hour = Feature(name="hour_of_day", side="context", kind="numeric", column="hour", min=0, max=23)
    assert fit_context(pl.DataFrame({"hour": [0, 5, 23]}), [hour])[0].maximum == 23
    with pytest.raises(DataError, match=r"2 training event\(s\) outside its declared range \[0.0, 23.0\]"):
        fit_context(pl.DataFrame({"hour": [0, 24, -1]}), [hour])
    with pytest.raises(ValueError, match="min < max"):
        Feature(name="bad", side="context", kind="numeric", min=5, max=1)


def test_a_model_that_outputs_nan_is_logged_at_warning_with_its_version(caplog) -> None:
    from rankforge.serving.ranking_service import _check_scores

    with caplog.at_level(logging.WARNING), pytest.raises(RankError):
        _check_scores(np.array([0.1, np.nan, np.inf], dtype=np.float32), "ranker rf-nan/3")
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ranker rf-nan/3" in record.getMessage() and "2 of 3" in record.getMessage()


# -- every CLI failure in one line, exit 2 (item 9) ------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_mlflow_store_is_one_line_and_exit_2(damage, bundles, rankforge_home, capsys) -> None:
    import mlflow

    from rankforge.bundles.registry import log_and_register
    from rankforge.cli import main
    from rankforge.settings import Settings, configure_mlflow

    settings = Settings.from_env()
    configure_mlflow(settings, "store-test")
    with mlflow.start_run():
        log_and_register(bundles.ranker, "rf-store", alias="champion")
    store = settings.home / "mlflow.db"
    raw = store.read_bytes()
    capsys.readouterr()  # the registration's own output
    if damage == "empty":
        store.write_bytes(b"")
    elif damage == "truncated":
        store.write_bytes(raw[: len(raw) // 3])
    else:
        store.write_bytes(b"\x00" * 100 + raw[100:])
    for argv in (
        ["promote", "rf-store", "--challenger", "1"],
        [
            "serve",
            "--ranker",
            "models:/rf-store@champion",
            "--retrieval",
            str(bundles.retrieval),
            "--port",
            "0",
        ],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the MLflow store {store}" in err, err
    assert store.stat().st_size == (0 if damage == "empty" else store.stat().st_size)  # nothing re-created


def test_a_missing_store_is_reported_when_a_registered_model_is_expected(rankforge_home, capsys) -> None:
    from rankforge.cli import main

    assert main(["promote", "rf-nothing", "--challenger", "1"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (rankforge_home / "mlflow.db").exists()


def test_a_broken_onnx_graph_is_a_data_error_naming_it(bundles, tmp_path) -> None:
    from rankforge.bundles.bundle import load_bundle, seal
    from rankforge.bundles.runtime import load_ranker
    from rankforge.errors import DataError

    broken = tmp_path / "broken"
    shutil.copytree(bundles.ranker, broken)
    onnx = broken / "ranker.onnx"
    onnx.write_bytes(onnx.read_bytes()[:200])
    seal(broken)  # a bundle exported broken, not one damaged later
    with pytest.raises(DataError, match=r"cannot load the ONNX graph .*ranker\.onnx"):
        load_ranker(load_bundle(broken), "v1")


def test_tls_problems_are_named_at_start(tmp_path, caplog) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from rankforge.errors import ConfigError
    from rankforge.serving.security import TlsConfig

    def write(name: str, days: float) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(key, hashes.SHA256())
        )
        paths = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return paths

    good_cert, good_key = write("good", 10)
    _, other_key = write("other", 10)
    TlsConfig(good_cert, good_key).check()
    with pytest.raises(ConfigError, match="the TLS key does not match the certificate"):
        TlsConfig(good_cert, other_key).check()
    old_cert, old_key = write("expired", -1)
    with caplog.at_level(logging.WARNING):
        TlsConfig(old_cert, old_key).check()
    assert any("expired on" in r.getMessage() for r in caplog.records)


def test_an_unreadable_job_state_with_a_valid_checksum_is_one_line(tmp_path) -> None:
    import pickle

    from rankforge.errors import ConfigError
    from rankforge.training.checkpoint import EXTRA, Checkpointer, write_checksums
    from rankforge.training.sharding import DistEnv

    folder = tmp_path / "epoch_0001"
    folder.mkdir()
    (folder / EXTRA).write_bytes(pickle.dumps("not a state") + b"\x00garbage")
    write_checksums(folder)
    env = DistEnv(0, 1, 0, __import__("torch").device("cpu"), "gloo", False)
    checkpointer = Checkpointer(tmp_path, keep=2, env=env)
    with pytest.raises(ConfigError, match=r"cannot read .*job_state\.pt"):
        checkpointer.read_state(folder)


def test_help_never_prints_the_configured_redis_password(monkeypatch, capsys) -> None:
    from rankforge.cli import main

    monkeypatch.setenv("RANKFORGE_REDIS_URL", "redis://admin:topsecret@10.0.0.5:6379/0")
    for command in ("serve", "materialize"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "topsecret" not in capsys.readouterr().out


def test_health_is_not_serving_while_the_current_feature_version_is_missing(
    make_server, redis_client, layout, serving_data, feature_version, user_id, caplog
) -> None:
    from rankforge.serving.feature_writer import FeatureWriter
    from rankforge.serving.proto import SERVICE_NAME

    server = make_server(feature_check_s=0.2)
    assert server.check_features() is None
    assert _health(server.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    # the current version's keys gone (expired, evicted, deleted) while the pointer still names it
    for key in list(redis_client.scan_iter(f"{layout.prefix}:{feature_version}:*")):
        redis_client.delete(key)
    deadline = time.monotonic() + 5
    while _health(server.address, SERVICE_NAME) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health did not turn NOT_SERVING"
        time.sleep(0.05)
    assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "has no meta record (expired or deleted)" in server.check_features()
    assert any("health NOT_SERVING: the current feature version" in r.getMessage() for r in caplog.records)
    # a new version makes it SERVING again, and it answers
    FeatureWriter(redis_client, layout, ttl_s=300).write(serving_data)
    deadline = time.monotonic() + 5
    while _health(server.address, SERVICE_NAME) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "health did not turn SERVING again"
        time.sleep(0.05)
    # the new version loads off the request path; the requests after it use it
    with RankingClient(server.address, timeout_s=5.0) as client:
        deadline = time.monotonic() + 5
        while True:
            try:
                assert client.rank(user_id, k=3).items
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new version was never served"
                time.sleep(0.05)


def test_a_server_started_without_a_current_feature_version_is_not_serving(make_server) -> None:
    from rankforge.serving.proto import SERVICE_NAME

    server = make_server()  # this test's prefix holds nothing
    assert "no feature version is current" in server.check_features()
    assert _health(server.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"history_len": 10**9}, r"history_len must be an integer in \[0, 100000\], got '1000000000'"),
        ({"history_len": "20"}, "history_len must be an integer"),
        ({"n_items": -1}, "n_items must be an integer"),
        ({"inputs": {"user_tower.onnx": "user_id"}}, "inputs must map graph files to lists"),
        ({"metrics": {"auc": "high"}}, "metrics must map names to numbers"),
        ({"index": []}, "index must be a mapping"),
        ({"files": {"ranker.onnx": 3}}, "files must map names to digests"),
    ],
)
def test_every_manifest_field_is_checked_at_load_in_one_line(bundles, tmp_path, edit, message) -> None:
    from rankforge.bundles.bundle import load_bundle
    from rankforge.errors import DataError

    copy = tmp_path / "bundle"
    shutil.copytree(bundles.ranker, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    with pytest.raises(DataError, match=message) as err:
        load_bundle(copy)
    assert "\n" not in str(err.value)

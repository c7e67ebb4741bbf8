"""Reliability round three (issue #19): the probes that stalled a server or served wrong answers as
OK, each reproduced against a real server, a real Redis and real files."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    """With every Rank slot busy, one more Rank answers RESOURCE_EXHAUSTED at once and health
    checks and reflection still answer: they have worker threads of their own."""
    server = make_server(workers=2)
    release = threading.Event()
    entered = threading.Semaphore(0)
    original = server.service._rank

    def slow_rank(request, request_id, context):
        entered.release()
        release.wait(30)
        return original(request, request_id, context)

    server.service._rank = slow_rank  # type: ignore[method-assign]
    with RankingClient(server.address, timeout_s=30.0) as client, ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(client.rank, user_id, 3) for _ in range(2)]
        for _ in range(2):
            assert entered.acquire(timeout=10)
        err = _status(lambda: client.rank(user_id, k=3, timeout_s=5.0))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in err.details()
        for service in ("", "rankforge.v1.RankingService"):
            assert _health(server.address, service) == health_pb2.HealthCheckResponse.SERVING
        release.set()
        assert all(f.result().items for f in busy)
    assert server.service.outcomes["RESOURCE_EXHAUSTED"] == 1


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

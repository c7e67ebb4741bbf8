"""Failure and lifecycle behaviour: Redis down or stalled, deadlines, health, reflection,
graceful shutdown and model refresh."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from rankforge.serving.client import RankingClient
from rankforge.serving.proto import SERVICE_NAME
from rankforge.serving.ranking_service import ServiceLimits

pytestmark = pytest.mark.redis


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_redis_down_answers_unavailable_quickly(make_server, closed_port, user_id) -> None:
    srv = make_server(redis_url=f"redis://127.0.0.1:{closed_port}/0")
    with RankingClient(srv.address) as client:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.rank(user_id, k=5, timeout_s=5.0)
        elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "feature store unavailable" in info.value.details()
    assert elapsed < 1.0


def test_stalled_redis_is_bounded_by_the_redis_timeout(make_server, stalled_redis, user_id) -> None:
    srv = make_server(redis_url=stalled_redis, limits=ServiceLimits(redis_timeout_s=0.3))
    with RankingClient(srv.address) as client:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.rank(user_id, k=5, timeout_s=5.0)
        elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 0.25 < elapsed < 1.5


def test_deadline_caps_the_redis_wait(make_server, stalled_redis, user_id) -> None:
    """Redis timeout 5 s, deadline 0.3 s: the handler gives up at the deadline, not after 5 s."""
    srv = make_server(redis_url=stalled_redis, limits=ServiceLimits(redis_timeout_s=5.0))
    with RankingClient(srv.address) as client, pytest.raises(grpc.RpcError) as info:
        client.rank(user_id, k=5, timeout_s=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_for(lambda: srv.service.outcomes["DEADLINE_EXCEEDED"] == 1, timeout_s=1.5)


def test_health_and_reflection(server) -> None:
    with RankingClient(server.address) as client:
        assert client.health() == "SERVING"
        assert client.health(SERVICE_NAME) == "SERVING"
        database = ProtoReflectionDescriptorDatabase(client.channel)
        services = database.get_services()
        assert SERVICE_NAME in services
        assert "grpc.health.v1.Health" in services
        file = database.FindFileContainingSymbol(SERVICE_NAME)
        assert file.name == "rankforge/v1/ranking.proto"
        assert [m.name for m in file.service[0].method] == ["Rank", "Auction"]


def test_graceful_shutdown_finishes_in_flight_requests(make_server, stalled_redis, user_id) -> None:
    # The in-flight request waits ~0.8 s on a stalled Redis, then its handler answers UNAVAILABLE
    # with its own message: it ran to completion inside the grace period instead of being cut off.
    srv = make_server(redis_url=stalled_redis, limits=ServiceLimits(redis_timeout_s=0.8))
    client = RankingClient(srv.address)
    outcome: dict[str, grpc.RpcError] = {}

    def call() -> None:
        try:
            client.rank(user_id, k=5, timeout_s=5.0)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)  # the request is now in the handler
    stopper = threading.Thread(target=srv.stop, kwargs={"grace_s": 3.0})
    started = time.monotonic()
    stopper.start()
    assert _wait_for(
        lambda: srv.health_status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING,
        timeout_s=1.0,
    )
    stopper.join(5)
    worker.join(5)
    waited = time.monotonic() - started
    assert outcome["error"].code() == grpc.StatusCode.UNAVAILABLE
    assert "feature store unavailable" in outcome["error"].details()
    assert 0.4 < waited < 3.0
    with pytest.raises(grpc.RpcError) as info:
        client.rank(user_id, k=5, timeout_s=1.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_the_served_version_is_joined_with_the_models_before_any_request(server) -> None:
    items, models = server.reader.served.items, server.watcher.models
    joined = {id(lookup) for lookup, _ in items._joins.values()}
    assert joined == {id(models.retrieval.items), id(models.ranker.items)}


def test_model_refresh_swaps_to_the_new_bundle(
    make_server, bundles, serving_data, feature_version, user_id, expected, tmp_path
) -> None:
    link = tmp_path / "current"
    link.symlink_to(bundles.retrieval)
    srv = make_server(retrieval=link, refresh_interval_s=0.1)
    with RankingClient(srv.address) as client:
        before = client.rank(user_id, k=5)
        staged = tmp_path / "current.new"
        staged.symlink_to(bundles.retrieval_b)
        os.replace(staged, link)  # atomic repoint, as a deploy would do
        assert _wait_for(lambda: client.rank(user_id, k=5).retrieval_version != before.retrieval_version)
        after = client.rank(user_id, k=5)
    factor = srv.config.limits.retrieve_factor
    ids_b, logits_b, retrieval_b = expected(
        serving_data, bundles.retrieval_b, bundles.ranker, user_id, 5, factor
    )
    assert [i.item_id for i in after.items] == ids_b
    np.testing.assert_allclose([i.score for i in after.items], logits_b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([i.retrieval_score for i in after.items], retrieval_b, rtol=1e-4, atol=1e-5)
    ids_a, _, retrieval_a = expected(serving_data, bundles.retrieval, bundles.ranker, user_id, 5, factor)
    assert [i.item_id for i in before.items] == ids_a
    assert not np.allclose(retrieval_a, retrieval_b)


def test_broken_bundle_keeps_serving_the_old_model(
    make_server, bundles, feature_version, user_id, tmp_path
) -> None:
    link = tmp_path / "current"
    link.symlink_to(bundles.retrieval)
    srv = make_server(retrieval=link, refresh_interval_s=0)
    version = srv.watcher.models.retrieval.version
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    staged = tmp_path / "current.new"
    staged.symlink_to(broken)
    os.replace(staged, link)
    assert srv.watcher.refresh() is False
    assert srv.watcher.models.retrieval.version == version
    with RankingClient(srv.address) as client:
        assert client.rank(user_id, k=3).retrieval_version == version


def test_registry_alias_move_is_picked_up_by_a_running_server(
    make_server, bundles, feature_version, user_id, rankforge_home
) -> None:
    """Promotion moves ``champion``; a server started on the alias swaps to the new version."""
    import mlflow
    from mlflow import MlflowClient

    from rankforge.bundles.registry import log_and_register
    from rankforge.settings import Settings, configure_mlflow

    configure_mlflow(Settings.from_env(), "serving-refresh-test")
    with mlflow.start_run():
        log_and_register(bundles.retrieval, "rf-serve", alias="champion")
    with mlflow.start_run():
        log_and_register(bundles.retrieval_b, "rf-serve")
    srv = make_server(retrieval="models:/rf-serve@champion", refresh_interval_s=0.1)
    with RankingClient(srv.address) as client:
        before = client.rank(user_id, k=5)
        assert before.retrieval_version == "rf-serve/1"
        MlflowClient().set_registered_model_alias("rf-serve", "champion", "2")
        assert _wait_for(lambda: client.rank(user_id, k=5).retrieval_version == "rf-serve/2")
        after = client.rank(user_id, k=5)
    assert [i.retrieval_score for i in after.items] != [i.retrieval_score for i in before.items]


def test_a_champion_moved_to_a_broken_bundle_is_reported_once_and_leaves_no_files(
    make_server, bundles, feature_version, user_id, rankforge_home, tmp_path, caplog
) -> None:
    """#13 d: the server keeps the old model, says so once per version (a log line, the models
    health status), and removes the broken download instead of leaking a directory per poll."""
    import glob
    import logging
    import shutil
    import tempfile
    from pathlib import Path
    from urllib.parse import urlparse

    import mlflow
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from mlflow import MlflowClient

    from rankforge.bundles.registry import log_and_register
    from rankforge.settings import Settings, configure_mlflow

    configure_mlflow(Settings.from_env(), "serving-broken-test")
    with mlflow.start_run():
        log_and_register(bundles.ranker, "rf-broken", alias="champion")
    twin = tmp_path / "twin"
    shutil.copytree(bundles.ranker, twin)
    (twin / "NOTES.txt").write_text("a second version\n")
    with mlflow.start_run() as run:
        log_and_register(twin, "rf-broken")
    artifacts = Path(urlparse(run.info.artifact_uri).path)
    onnx = next(artifacts.rglob("ranker.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:100])  # truncated in the artifact store

    srv = make_server(ranker="models:/rf-broken@champion", refresh_interval_s=0)
    pattern = str(Path(tempfile.gettempdir()) / "rankforge-serving-*")
    MlflowClient().set_registered_model_alias("rf-broken", "champion", "2")
    before = set(glob.glob(pattern))
    with caplog.at_level(logging.INFO, logger="rankforge.serving.model_source"):
        assert srv.watcher.refresh() is False
        assert srv.watcher.refresh() is False
    assert set(glob.glob(pattern)) == before  # nothing left behind
    assert srv.watcher.models.ranker.version == "rf-broken/1"
    lines = [r for r in caplog.records if "cannot load ranker model rf-broken/2" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    with RankingClient(srv.address) as client:
        assert client.rank(user_id, k=3).ranker_version == "rf-broken/1"
        health = health_pb2_grpc.HealthStub(client.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=srv.MODELS_HEALTH)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.health() == "SERVING"  # the service itself still answers

"""Regression tests of the probed defects (issue #13 a-c): overflowing context values, non-finite
model outputs, oversized caller input echoed back, undecodable request bytes."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import torch

from rankforge.bundles.export import build_ranker_bundle
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.models.inputs import sparse_features
from rankforge.models.ranking import RankingModel
from rankforge.serving.client import RankingClient

pytestmark = pytest.mark.redis


def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


@pytest.mark.parametrize("value", [1e39, -1e308])
def test_context_values_that_overflow_float32_are_invalid(server, user_id, value) -> None:
    with RankingClient(server.address) as client:
        err = _status(lambda: client.rank(user_id, k=3, context={"user_pos_rate": value}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "overflows float32" in err.details()


@pytest.fixture
def nan_ranker(serving_data, tmp_path: Path) -> Path:
    d = serving_data
    torch.manual_seed(0)
    sparse = sparse_features(d.inputs, "user") + sparse_features(d.inputs, "item")
    model = RankingModel(sparse, DENSE_FEATURES, embedding_dim=8)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "over_arch" in n).fill_(float("nan"))
    build_ranker_bundle(model, d, str(tmp_path / "nan"))
    return tmp_path / "nan"


def test_a_model_that_outputs_nan_fails_the_request(
    make_server, feature_version, nan_ranker, user_id
) -> None:
    server = make_server(ranker=str(nan_ranker))
    with RankingClient(server.address) as client:
        err = _status(lambda: client.rank(user_id, k=3))
    assert err.code() == grpc.StatusCode.INTERNAL and "non-finite score" in err.details()


def test_oversized_caller_input_is_quoted_short_and_keeps_its_status(server, user_id) -> None:
    with RankingClient(server.address, timeout_s=5.0) as client:
        err = _status(lambda: client.rank(user_id, k=3, context={"x" * 1_000_000: 1.0}))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown context feature" in err.details() and len(err.details()) < 1000
        err = _status(lambda: client.rank(user_id, k=3, request_id="r" * 20_000))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id is 20000 characters" in err.details() and len(err.details()) < 1000
        err = _status(lambda: client.rank(987_654_321, k=3, request_id="q" * 100))
        assert err.code() == grpc.StatusCode.NOT_FOUND  # a long but allowed id is echoed whole


def test_undecodable_bytes_are_invalid_argument_without_a_traceback(
    server, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.INFO):
        raw = channel.unary_unary(
            "/rankforge.v1.RankingService/Rank",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        err = _status(lambda: raw(b"\xff\xff\xff\xff not a protobuf", timeout=2.0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid rankforge.v1.RankRequest" in err.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_feature_store_key_of_the_wrong_type_is_internal_with_a_clear_message(
    server, redis_client, layout, user_id
) -> None:
    redis_client.delete(layout.current)
    redis_client.hset(layout.current, "oops", "1")
    with RankingClient(server.address) as client:
        err = _status(lambda: client.rank(user_id, k=3))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "feature store error" in err.details() and "WRONGTYPE" in err.details()

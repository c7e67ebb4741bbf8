"""End to end over loopback: real server, real Redis, answers checked against a direct computation."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from rankforge.serving.client import RankingClient

pytestmark = pytest.mark.redis


def test_retrieve_then_rank_matches_direct_computation(
    server, serving_data, bundles, user_id, seen_of, feature_version, expected
) -> None:
    with RankingClient(server.address) as client:
        result = client.rank(user_id, k=7, request_id="req-1")
    ids, logits, retrieval = expected(
        serving_data, bundles.retrieval, bundles.ranker, user_id, 7, server.config.limits.retrieve_factor
    )
    assert [i.item_id for i in result.items] == ids
    np.testing.assert_allclose([i.score for i in result.items], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([i.retrieval_score for i in result.items], retrieval, rtol=1e-4, atol=1e-5)
    assert not set(ids) & set(seen_of(user_id))
    assert result.request_id == "req-1"
    assert result.feature_version == feature_version
    assert result.retrieval_version == server.watcher.models.retrieval.version
    assert result.ranker_version == server.watcher.models.ranker.version


def test_stored_features_are_not_context(server, user_id) -> None:
    """The context map takes declared request-context features only: a stored user feature is
    the feature store's, and this ranker declares no context feature."""
    with RankingClient(server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.rank(user_id, k=5, candidates=[5, 6, 7], context={"user_log_events": 9.0})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "unknown context feature(s) 'user_log_events'; the model declares no context feature"
    )


def test_candidate_list_is_ranked_without_seen_items(
    server, serving_data, bundles, user_id, seen_of, expected
) -> None:
    history = seen_of(user_id)
    others = [int(i) for i in serving_data.mapping.items["item_id"] if int(i) not in history][:12]
    candidates = [history[0], *others]
    with RankingClient(server.address) as client:
        result = client.rank(user_id, k=5, candidates=candidates)
    ids, logits, retrieval = expected(
        serving_data, bundles.retrieval, bundles.ranker, user_id, 5, 1, candidates=candidates
    )
    assert [i.item_id for i in result.items] == ids
    assert history[0] not in ids
    assert result.n_ranked == len(others)
    np.testing.assert_allclose([i.score for i in result.items], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([i.retrieval_score for i in result.items], retrieval, rtol=1e-4, atol=1e-5)


def test_k_larger_than_candidates_returns_all_eligible(server, user_id, seen_of) -> None:
    history = seen_of(user_id)
    with RankingClient(server.address) as client:
        only_history = client.rank(user_id, k=50, candidates=history[:2])
        few = client.rank(
            user_id, k=50, candidates=[*history[:1], *[i for i in range(1, 9) if i not in history][:3]]
        )
    assert only_history.items == [] and only_history.n_ranked == 0
    assert len(few.items) == 3 and few.n_ranked == 3


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..1000"),
        ({"k": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..1000"),
        ({"context": {"no_such_feature": 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "unknown context feature"),
        ({"context": {"item_pos_rate": 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "unknown context feature"),
        ({"context": {"user_pos_rate": math.nan}}, grpc.StatusCode.INVALID_ARGUMENT, "not finite"),
        ({"candidates": []}, grpc.StatusCode.INVALID_ARGUMENT, "set but empty"),
        ({"candidates": [3, 4, 3]}, grpc.StatusCode.INVALID_ARGUMENT, "duplicate candidate item ids: 3"),
        ({"candidates": [3, 987654321]}, grpc.StatusCode.NOT_FOUND, "have no features"),
        ({"user_id": 987654321}, grpc.StatusCode.NOT_FOUND, "user 987654321 has no features"),
    ],
)
def test_bad_input_answers_a_clear_status(server, user_id, kwargs, code, message) -> None:
    call = {"user_id": user_id, "k": 5, **kwargs}
    with RankingClient(server.address) as client, pytest.raises(grpc.RpcError) as info:
        client.rank(**call)
    assert info.value.code() == code
    assert message in info.value.details()


def test_too_many_candidates_is_rejected(server, user_id) -> None:
    n = server.config.limits.max_candidates + 1
    with RankingClient(server.address) as client, pytest.raises(grpc.RpcError) as info:
        client.rank(user_id, k=5, candidates=list(range(n)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_current_feature_version_is_failed_precondition(make_server, user_id) -> None:
    srv = make_server()  # nothing materialised under this test's prefix
    with RankingClient(srv.address) as client, pytest.raises(grpc.RpcError) as info:
        client.rank(user_id, k=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no feature version is current" in info.value.details()


def test_requests_are_served_concurrently(server, user_id) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with RankingClient(server.address) as client:
        reference = client.rank(user_id, k=5)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: client.rank(user_id, k=5), range(32)))
    assert all(r.items == reference.items for r in results)

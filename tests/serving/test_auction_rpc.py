"""The Auction RPC over loopback against the real Redis: pCTRs from the ad ranker, eCPM order,
prices under the rule, and INVALID_ARGUMENT / FAILED_PRECONDITION for what cannot be run."""

from __future__ import annotations

import math

import grpc
import pytest

from rankforge.serving.client import RankingClient

pytestmark = pytest.mark.redis


@pytest.fixture
def ads_server(make_server, bundles, feature_version):
    return make_server(ad_ranker=str(bundles.ranker))


def test_auction_orders_by_ecpm_with_gsp_prices(
    ads_server, serving_data, bundles, user_id, seen_of, expected
) -> None:
    ads = [int(i) for i in serving_data.mapping.items["item_id"] if int(i) not in seen_of(user_id)][:6]
    bids = dict(zip(ads, [0.5, 2.0, 1.0, 3.5, 0.8, 1.2], strict=True))
    with RankingClient(ads_server.address) as client:
        result = client.auction(user_id, bids, request_id="auction-1")
    # the ad ranker's logits, computed independently of the server
    ids, logits, _ = expected(
        serving_data, bundles.retrieval, bundles.ranker, user_id, len(ads), 1, candidates=ads
    )
    pctr = {i: 1 / (1 + math.exp(-z)) for i, z in zip(ids, logits, strict=True)}
    ecpm = {a: bids[a] * pctr[a] for a in ads}
    order = sorted(ads, key=lambda a: -ecpm[a])
    assert [a.ad_id for a in result.ads] == order
    for pos, ad in enumerate(result.ads):
        assert ad.pctr == pytest.approx(pctr[ad.ad_id], rel=1e-4)
        assert ad.ecpm == pytest.approx(ecpm[ad.ad_id], rel=1e-4)
        runner_up = ecpm[order[pos + 1]] if pos + 1 < len(order) else 0.0
        assert ad.price == pytest.approx(min(runner_up / pctr[ad.ad_id], bids[ad.ad_id]), rel=1e-4)
        assert ad.price <= ad.bid
    assert result.rule == "gsp" and result.request_id == "auction-1"
    assert result.ranker_version == ads_server.watcher.models.ad_ranker.version


def test_first_price_rule(make_server, bundles, feature_version, user_id, serving_data) -> None:
    server = make_server(ad_ranker=str(bundles.ranker), auction_rule="first_price")
    ads = [int(i) for i in serving_data.mapping.items["item_id"]][:3]
    with RankingClient(server.address) as client:
        result = client.auction(user_id, {a: 1.0 + a for a in ads})
    assert result.rule == "first_price"
    assert all(ad.price == ad.bid for ad in result.ads)


@pytest.mark.parametrize(
    ("bids", "message"),
    [
        ({5: 1.0, 6: 0.0}, "bids must be finite numbers > 0; got 6: 0.0"),
        ({5: 1.0, 6: -2.0}, "bids must be finite numbers > 0; got 6: -2.0"),
        ({5: float("nan"), 6: 1.0}, "bids must be finite numbers > 0; got 5: nan"),
        ({5: float("inf")}, "bids must be finite numbers > 0; got 5: inf"),
        ({}, "an auction needs at least one ad"),
        ([(5, 1.0), (5, 2.0)], "duplicate ad ids: 5"),
        ({i: 1.0 for i in range(1001)}, "at most 1000 ads per auction, got 1001"),
    ],
)
def test_bad_auctions_are_invalid_argument(ads_server, user_id, bids, message) -> None:
    with RankingClient(ads_server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.auction(user_id, bids)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_unknown_ads_and_a_server_without_ad_ranker(ads_server, server, user_id) -> None:
    with RankingClient(ads_server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.auction(user_id, {5: 1.0, 987_654: 1.0})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "987654" in err.value.details()
    with RankingClient(server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.auction(user_id, {5: 1.0, 6: 1.0})
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no ad ranker" in err.value.details()

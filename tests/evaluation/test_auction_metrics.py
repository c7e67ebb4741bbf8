"""Welfare and revenue of auctions run on a model's pCTRs, against a loop written from the rules."""

from __future__ import annotations

import numpy as np
import pytest

from rankforge.evaluation.auction_metrics import auction_metrics, auction_outcomes


def _loop(pctr, bids, clicks, mask, true_ctr):
    welfare, oracle, realized, revenue = [], [], [], []
    for a in range(pctr.shape[0]):
        ads = [i for i in range(pctr.shape[1]) if mask[a, i]]
        ecpm = {i: bids[a, i] * pctr[a, i] for i in ads}
        ranked = sorted(ads, key=lambda i: -ecpm[i])
        w, second = ranked[0], ranked[1]
        price = min(ecpm[second] / pctr[a, w], bids[a, w])  # second price per click
        welfare.append(bids[a, w] * true_ctr[a, w])
        oracle.append(max(bids[a, i] * true_ctr[a, i] for i in ads))
        realized.append(bids[a, w] * clicks[a, w])
        revenue.append(price * true_ctr[a, w])
    return map(np.array, (welfare, oracle, realized, revenue))


def test_outcomes_match_the_auction_rules() -> None:
    rng = np.random.default_rng(0)
    a, m = 200, 6
    pctr, true_ctr = rng.uniform(0.01, 0.3, (a, m)), rng.uniform(0.01, 0.3, (a, m))
    bids = rng.lognormal(0, 1, (a, m))
    clicks = (rng.random((a, m)) < true_ctr).astype(float)
    mask = np.ones((a, m), dtype=bool)
    mask[::3, 4:] = False  # auctions of 4 ads among auctions of 6
    got = auction_outcomes(pctr, bids, clicks, mask, true_ctr)
    welfare, oracle, realized, revenue = _loop(pctr, bids, clicks, mask, true_ctr)
    np.testing.assert_allclose(got.expected_welfare, welfare)
    np.testing.assert_allclose(got.oracle_welfare, oracle)
    np.testing.assert_allclose(got.realized_welfare, realized)
    np.testing.assert_allclose(got.expected_revenue, revenue)
    assert got.welfare_ratio() == pytest.approx(welfare.sum() / oracle.sum())
    # the true CTRs themselves are the oracle
    assert auction_outcomes(true_ctr, bids, clicks, mask, true_ctr).welfare_ratio() == pytest.approx(1.0)


def test_metrics_without_true_ctrs_report_realised_values_only() -> None:
    pctr = np.array([[0.1, 0.2], [0.3, 0.1]])
    bids = np.array([[1.0, 1.0], [1.0, 4.0]])
    clicks = np.array([[0.0, 1.0], [1.0, 0.0]])
    metrics = auction_metrics(pctr, bids, clicks, np.ones((2, 2), dtype=bool), None)
    assert "welfare_ratio" not in metrics
    # auction 1: ad 1 wins (0.2 > 0.1), clicked, pays 0.1 / 0.2 * ... = 0.5 per click
    # auction 2: ad 1 wins (0.4 > 0.3), not clicked
    assert metrics["realized_welfare"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["realized_revenue"] == pytest.approx((0.5 + 0.0) / 2)

"""What an auction model is worth to the auction: welfare, revenue, and CTR accuracy.

Each auction picks the ad with the largest eCPM ``bid * pCTR`` (one slot). Per auction:

* expected welfare ``bid_w * ctr_w`` of the winner ``w`` under the *true* CTRs (simulated logs),
  and the oracle's ``max_i bid_i * ctr_i``: their ratio is the share of the attainable welfare
  the model's CTRs realise (1 = the auction always picks the welfare-maximising ad);
* realised welfare ``bid_w * click_w`` on the logged clicks (every ad of a logged auction was
  shown, so the winner's click is observed);
* revenue under the second-price rule (GSP with one slot): the winner pays per click the
  smallest bid that would still have won, ``eCPM_2 / pCTR_w``; expected revenue multiplies it by
  the true CTR, realised revenue by the click.

Values are kept per auction so that bootstrap intervals resample auctions (paired between two
models on the same auctions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankforge.evaluation.metrics import auc, logloss


@dataclass(frozen=True)
class AuctionOutcomes:
    """Per-auction values ``[A]`` (NaN where the log has no true CTRs)."""

    expected_welfare: np.ndarray
    oracle_welfare: np.ndarray
    realized_welfare: np.ndarray
    expected_revenue: np.ndarray
    realized_revenue: np.ndarray

    def welfare_ratio(self, rows: np.ndarray | None = None) -> float:
        rows = np.arange(self.expected_welfare.size) if rows is None else rows
        return float(self.expected_welfare[rows].sum() / self.oracle_welfare[rows].sum())


def auction_outcomes(
    pctr: np.ndarray, bids: np.ndarray, clicks: np.ndarray, mask: np.ndarray, true_ctr: np.ndarray | None
) -> AuctionOutcomes:
    """Outcomes of running every auction (rows of the padded ``[A, M]`` arrays) on ``pctr``."""
    ecpm = np.where(mask, bids * pctr, -np.inf)
    order = np.argsort(-ecpm, axis=1, kind="stable")
    winner, runner_up = order[:, 0], order[:, 1]
    rows = np.arange(ecpm.shape[0])
    win_bid, win_pctr = bids[rows, winner], pctr[rows, winner]
    second = ecpm[rows, runner_up]
    price = np.where(np.isfinite(second), second / np.maximum(win_pctr, 1e-12), 0.0)
    price = np.minimum(price, win_bid)  # a winner never pays more than its bid
    click = clicks[rows, winner]
    if true_ctr is None:
        nan = np.full(rows.size, np.nan)
        expected, oracle, revenue = nan, nan, nan
    else:
        expected = win_bid * true_ctr[rows, winner]
        oracle = np.where(mask, bids * true_ctr, -np.inf).max(axis=1)
        revenue = price * true_ctr[rows, winner]
    return AuctionOutcomes(expected, oracle, win_bid * click, revenue, price * click)


def auction_metrics(
    pctr: np.ndarray, bids: np.ndarray, clicks: np.ndarray, mask: np.ndarray, true_ctr: np.ndarray | None
) -> dict[str, float]:
    """Mean per-auction welfare and revenue, the welfare ratio to the oracle (true CTRs known),
    and AUC / LogLoss of the pCTRs over every shown ad."""
    out = auction_outcomes(pctr, bids, clicks, mask, true_ctr)
    metrics = {
        "realized_welfare": float(out.realized_welfare.mean()),
        "realized_revenue": float(out.realized_revenue.mean()),
        "logloss": logloss(clicks[mask], pctr[mask]),
    }
    if 0 < clicks[mask].sum() < mask.sum():
        metrics["auc"] = auc(clicks[mask], pctr[mask])
    if true_ctr is not None:
        metrics.update(
            expected_welfare=float(out.expected_welfare.mean()),
            oracle_welfare=float(out.oracle_welfare.mean()),
            welfare_ratio=out.welfare_ratio(),
            expected_revenue=float(out.expected_revenue.mean()),
        )
    return metrics

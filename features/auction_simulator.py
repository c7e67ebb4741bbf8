"""Simulated ad auctions with a known ground truth, over the users and items of the synthetic log.

Why simulate: welfare -- the bid times the *true* click probability of the ad an auction picks --
can only be computed exactly when the true CTRs are known, and the welfare rankloss of Lyu et al.
(ICML 2023) matters exactly when the CTR model cannot be perfect. So:

* the users and ads are the synthetic log's users and items (``synthetic_world``: same seed, same
  hidden tastes), so the features the pipeline derives from that log (histories, genres,
  popularity) say something about who clicks what;
* the true CTR is ``sigmoid(logit(base_ctr) + affinity_scale * a_ui + misspecification * z_ui)``
  where ``a_ui`` is the hidden user-item affinity (standardised; low rank, learnable from the
  features) and ``z_ui ~ N(0, 1)`` a fixed draw per (user, ad) *pair*: a full-rank part that a
  factorised CTR model cannot represent, the misspecification knob (0 = a model could be
  perfect). It is the same in every auction, so it is bias, not noise that averages out;
* bids are log-normal per ad (``bid_sigma``) with a small per-auction jitter, optionally
  correlated with the true CTR in log space (``bid_ctr_correlation``);
* every auction shows its ``ads_per_auction`` ads (full feedback; ``position`` is the order of a
  logging policy that ranks by bid), and each click is drawn from the true CTR.

The log carries ``true_ctr`` so evaluation can compute expected welfare against the oracle.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtri

from rankforge.features.auctions import AUCTION_SCHEMA
from rankforge.features.synthetic import synthetic_world


class AuctionSimulation(BaseModel):
    """Knobs of the simulator (also a config section: ``[auctions.simulate]``)."""

    model_config = ConfigDict(extra="forbid")
    n_auctions: int = Field(20_000, ge=1)
    ads_per_auction: int = Field(8, ge=2)
    base_ctr: float = Field(0.05, gt=0, lt=1)
    affinity_scale: float = Field(1.0, ge=0)
    misspecification: float = Field(1.0, ge=0)
    bid_distribution: Literal["lognormal", "uniform"] = "lognormal"
    bid_sigma: float = Field(0.8, ge=0)  # lognormal: std of log bid across ads; uniform: [1, 1 + 10 sigma]
    bid_ctr_correlation: float = Field(0.0, ge=-1, le=1)
    seed: int = 0


def pair_normal(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """A fixed standard normal per (user, item) pair, from a hash (no users x items table)."""
    with np.errstate(over="ignore"):  # 64-bit hashing (splitmix64): wrap-around is the point
        salt = np.uint64(seed) * np.uint64(0xBF58476D1CE4E5B9)
        key = (users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (items.astype(np.uint64) + salt)
        key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        key = key ^ (key >> np.uint64(31))
    uniform = ((key >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return ndtri(uniform)


def simulate_auctions(
    sim: AuctionSimulation, n_users: int = 300, n_items: int = 400, n_clusters: int = 6, world_seed: int = 0
) -> pl.DataFrame:
    """An auction log in :data:`AUCTION_SCHEMA` order plus ``true_ctr``; deterministic per seed."""
    world = synthetic_world(n_users, n_items, n_clusters, world_seed)
    rng = np.random.default_rng(sim.seed)
    a, m = sim.n_auctions, min(sim.ads_per_auction, n_items)
    users = rng.integers(n_users, size=a)
    ads = np.argsort(rng.random((a, n_items)), axis=1)[:, :m]  # m distinct ads per auction
    affinity = (world.affinity - world.affinity.mean()) / world.affinity.std()
    hidden = pair_normal(users[:, None], ads, sim.seed)
    logit = np.log(sim.base_ctr / (1 - sim.base_ctr)) + sim.affinity_scale * affinity[users[:, None], ads]
    logit = logit + sim.misspecification * hidden
    true_ctr = 1.0 / (1.0 + np.exp(-logit))
    if sim.bid_distribution == "lognormal":
        ad_log_bid = rng.normal(scale=sim.bid_sigma, size=n_items)
    else:
        ad_log_bid = np.log(1.0 + 10 * sim.bid_sigma * rng.random(n_items))
    standard = (logit - logit.mean()) / (logit.std() + 1e-12)
    log_bid = ad_log_bid[ads] + rng.normal(scale=0.1, size=(a, m)) + sim.bid_ctr_correlation * standard
    bids = np.exp(log_bid)
    clicks = (rng.random((a, m)) < true_ctr).astype(np.int8)
    position = np.argsort(np.argsort(-bids, axis=1), axis=1)  # the logging policy ranks by bid
    return pl.DataFrame(
        {
            "auction_id": np.repeat(np.arange(a, dtype=np.int64), m),
            "user_id": np.repeat(users + 1, m).astype(np.int64),
            "ad_id": (ads + 1).reshape(-1).astype(np.int64),
            "bid": bids.reshape(-1),
            "click": clicks.reshape(-1),
            "position": position.reshape(-1).astype(np.int32),
            "true_ctr": true_ctr.reshape(-1),
        },
        schema={**AUCTION_SCHEMA, "true_ctr": pl.Float64},
    )

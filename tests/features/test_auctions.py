"""Auction logs: schema validation with errors naming the bad rows, the simulator's ground truth,
and the padded tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.auction_simulator import AuctionSimulation, simulate_auctions
from rankforge.features.auctions import encode_auctions, read_auctions, split_auctions, validate_auctions
from rankforge.features.pipeline import DataConfig, prepare


def _log(**overrides: list) -> pl.DataFrame:
    rows = {
        "auction_id": [1, 1, 2, 2, 2],
        "user_id": [5, 5, 6, 6, 6],
        "ad_id": [10, 11, 10, 12, 13],
        "bid": [1.0, 2.5, 0.7, 1.2, 3.0],
        "click": [0, 1, 0, 0, 1],
    }
    rows.update(overrides)
    return pl.DataFrame(rows)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bid": [1.0, -2.5, 0.7, 1.2, 3.0]}, r"bids must be positive and finite: .*'bid': -2.5"),
        ({"bid": [1.0, float("nan"), 0.7, 1.2, 3.0]}, r"bids must be positive and finite: .*'ad_id': 11"),
        ({"bid": [1.0, float("inf"), 0.7, 1.2, 3.0]}, "bids must be positive and finite"),
        ({"click": [0, 2, 0, 0, 1]}, r"click must be 0 or 1: .*'click': 2"),
        ({"auction_id": [1, 3, 2, 2, 2]}, r"at least two ads: .*'auction_id': \d, 'ads': 1"),
        ({"ad_id": [10, 10, 10, 12, 13]}, r"an ad appears twice in one auction: .*'auction_id': 1"),
        ({"ad_id": [10, None, 10, 12, 13]}, r"1 row\(s\) with a null ad_id"),
        ({"bid": ["1.0", "x", "0.7", "1.2", "3.0"]}, r"column bid is not Float64: .*'bid': 'x'"),
    ],
)
def test_bad_rows_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_auctions(_log(**overrides))


def test_missing_columns_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) \['bid'\]"):
        validate_auctions(_log().drop("bid"))
    with pytest.raises(DataError, match="auction log not found"):
        read_auctions(tmp_path / "none.parquet")


def test_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    _log().write_csv(tmp_path / "a.csv")
    _log().write_parquet(tmp_path / "a.parquet")
    assert read_auctions(tmp_path / "a.csv").equals(read_auctions(tmp_path / "a.parquet"))


def test_simulator_is_deterministic_and_its_truth_is_consistent() -> None:
    sim = AuctionSimulation(n_auctions=4000, ads_per_auction=6, bid_ctr_correlation=0.6, seed=3)
    log = simulate_auctions(sim, n_users=50, n_items=80)
    assert log.equals(simulate_auctions(sim, n_users=50, n_items=80))
    assert not log.equals(simulate_auctions(sim.model_copy(update={"seed": 4}), n_users=50, n_items=80))
    validate_auctions(log)
    assert log.height == 4000 * 6 and log["true_ctr"].is_between(0, 1).all()
    # clicks are drawn from the true CTRs
    assert abs(log["click"].mean() - log["true_ctr"].mean()) < 0.01
    # bids correlate with the true CTR in log space as asked
    logit = np.log(log["true_ctr"] / (1 - log["true_ctr"]))
    assert np.corrcoef(np.log(log["bid"]), logit)[0, 1] > 0.3
    # the misspecification is a fixed effect per (user, ad) pair: the same pair, the same CTR
    by_pair = log.group_by("user_id", "ad_id").agg(pl.col("true_ctr").n_unique().alias("n"))
    assert by_pair["n"].max() == 1


def test_encoding_pads_auctions_and_refuses_ads_outside_the_catalogue() -> None:
    data = prepare(DataConfig())
    log = simulate_auctions(AuctionSimulation(n_auctions=50, ads_per_auction=4))
    uneven = log.filter(~((pl.col("auction_id") == 7) & (pl.col("position") == 0)))
    tensors = encode_auctions(uneven, data.mapping)
    assert tuple(tensors.ads.shape) == (50, 4)
    assert tensors.mask.sum().item() == uneven.height and tensors.mask[7].sum().item() == 3
    assert (tensors.ads[tensors.mask] >= 0).all() and tensors.true_ctr is not None
    foreign = log.with_columns(
        pl.when(pl.col("auction_id") == 3).then(99_999).otherwise(pl.col("ad_id")).alias("ad_id")
    )
    with pytest.raises(DataError, match=r"ads outside the item catalogue: .*'ad_id': 99999"):
        encode_auctions(foreign.filter(pl.col("position") < 2), data.mapping)


def test_auctions_are_split_whole() -> None:
    log = simulate_auctions(AuctionSimulation(n_auctions=1000))
    train, validation, test = split_auctions(log, 0.2, 0.1)
    ids = [set(part["auction_id"].to_list()) for part in (train, validation, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(i) for i in ids) == 1000 and 150 < len(ids[2]) < 250

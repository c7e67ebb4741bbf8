"""An auction job's auctions: read (or simulated), split by whole auctions, encoded with the
interaction data's id mapping so an ad's features are its item's."""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from rankforge.errors import DataError
from rankforge.features.auction_simulator import simulate_auctions
from rankforge.features.auctions import encode_auctions, read_auctions, split_auctions
from rankforge.features.pipeline import AuctionSplits, DataConfig, PreparedData
from rankforge.training.config import AuctionConfig


def auction_log(config: AuctionConfig, data: DataConfig) -> pl.DataFrame:
    if config.path is not None:
        return read_auctions(config.path)
    assert config.simulate is not None
    s = data.synthetic
    return simulate_auctions(config.simulate, s.n_users, s.n_items, s.n_clusters, s.seed)


def with_auctions(prepared: PreparedData, config: AuctionConfig, data: DataConfig) -> PreparedData:
    """``prepared`` carrying the auction splits of ``config``."""
    log = auction_log(config, data)
    train, validation, test = split_auctions(
        log, config.test_fraction, config.validation_fraction, config.split_seed
    )
    if train.height == 0 or test.height == 0:
        raise DataError(f"auctions: the split left {train.height} training and {test.height} test rows")
    mapping = prepared.mapping
    splits = AuctionSplits(
        train=encode_auctions(train, mapping),
        validation=encode_auctions(validation, mapping) if validation.height else None,
        test=encode_auctions(test, mapping),
    )
    return replace(prepared, auctions=splits)

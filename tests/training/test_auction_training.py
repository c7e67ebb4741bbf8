"""Auction models end to end: simulated auctions -> welfare rankloss (with and without a teacher)
or BCE -> welfare metrics -> a ranker bundle the server can load."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankforge.bundles.bundle import load_bundle
from rankforge.errors import ConfigError
from rankforge.pipelines.train import run_training
from rankforge.training.config import TrainConfig, parse_config


def _config(out: Path, objective: dict, **auctions: object) -> TrainConfig:
    return parse_config(
        {
            "output_dir": str(out),
            "data": {"synthetic": {"n_users": 60, "n_items": 80, "seed": 2}},
            "model": {"kind": "auction", "embedding_dim": 8, "dense_sizes": [8], "over_sizes": [16, 1]},
            "objective": objective,
            "training": {"epochs": 2, "batch_size": 128},
            "auctions": {"simulate": {"n_auctions": 1500, "ads_per_auction": 5, "seed": 2}, **auctions},
            "mlflow": {"experiment": "auction-test", "register_model": False},
        }
    )


@pytest.mark.slow
def test_bce_then_welfare_with_the_bce_model_as_teacher(rankforge_home: Path, tmp_path: Path) -> None:
    bce = run_training(_config(tmp_path / "bce", {"name": "bce"}))
    assert bce.metrics["best_epoch"] >= 1
    assert 0.5 < bce.metrics["welfare_ratio"] <= 1.0 and "expected_revenue" in bce.metrics
    bundle = load_bundle(bce.bundle_dir)
    assert bundle.manifest.kind == "ranker"  # served by the same ranker runtime

    teacher = {"name": "welfare_rankloss", "reference": str(bce.bundle_dir)}
    welfare = run_training(_config(tmp_path / "welfare", teacher))
    assert 0.5 < welfare.metrics["welfare_ratio"] <= 1.0
    assert welfare.metrics["train_loss"] > 0


def test_auction_config_errors_are_one_line() -> None:
    raw = {
        "model": {"kind": "auction"},
        "objective": {"name": "welfare_rankloss"},
    }
    with pytest.raises(ConfigError, match="model kind 'auction' and the \\[auctions\\] section go together"):
        parse_config(raw)
    raw["auctions"] = {"simulate": {}, "path": "x.parquet"}
    with pytest.raises(ConfigError, match="exactly one of path"):
        parse_config(raw)
    raw["auctions"] = {"simulate": {}}
    raw["data"] = {"source": "movielens", "path": "somewhere"}
    with pytest.raises(ConfigError, match=r"auctions\.simulate draws from the synthetic world"):
        parse_config(raw)
    raw.pop("data")
    raw["objective"] = {"name": "lcron"}
    with pytest.raises(ConfigError, match="use one of \\['bce', 'confidence_ranking', 'welfare_rankloss'\\]"):
        parse_config(raw)
    raw["objective"] = {"name": "welfare_rankloss"}
    assert parse_config(raw).selection == ("welfare_ratio", True)

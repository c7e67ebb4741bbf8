"""An ad ranker is promoted on auction welfare: `rankforge evaluate/promote --auctions LOG`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from rankforge.bundles.registry import log_and_register, resolve
from rankforge.cli import main
from rankforge.features.auction_simulator import AuctionSimulation, simulate_auctions
from rankforge.features.pipeline import DataConfig, SyntheticConfig, prepare
from rankforge.pipelines.ab_compare import ABConfig
from rankforge.pipelines.promote import Criterion, promote_if_better
from rankforge.pipelines.train import run_training
from rankforge.settings import Settings, configure_mlflow
from rankforge.training.config import parse_config

from .conftest import random_ranker_bundle

WORLD = DataConfig(synthetic=SyntheticConfig(n_users=60, n_items=80, seed=2))
NAME = "rf-ads"


@pytest.mark.slow
def test_a_trained_ad_ranker_beats_a_random_one_on_welfare(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_mlflow(Settings.from_env(), "auction-promotion")
    with mlflow.start_run():
        random = log_and_register(
            random_ranker_bundle(prepare(WORLD), tmp_path / "random"), NAME, alias="champion"
        )
    trained = run_training(
        parse_config(
            {
                "output_dir": str(tmp_path / "job"),
                "data": WORLD.model_dump(mode="json"),
                "model": {"kind": "auction", "embedding_dim": 8, "dense_sizes": [8], "over_sizes": [16, 1]},
                "objective": {"name": "welfare_rankloss"},
                "training": {"epochs": 3, "batch_size": 128},
                "auctions": {"simulate": {"n_auctions": 3000, "ads_per_auction": 5, "seed": 2}},
                "mlflow": {"registered_model": NAME, "experiment": "auction-promotion"},
            }
        )
    ).registered
    assert trained is not None and trained.version == random.version + 1
    # fresh auctions of the same users and ads (another seed), held out from both models
    held_out = tmp_path / "held_out.parquet"
    simulate_auctions(
        AuctionSimulation(n_auctions=1500, ads_per_auction=5, seed=9), 60, 80, world_seed=2
    ).write_parquet(held_out)

    config = ABConfig(n_resamples=200, auctions=str(held_out))
    decision = promote_if_better(NAME, trained.version, WORLD, (Criterion.parse("welfare_ratio"),), config)
    assert decision.promote, decision.reasons
    assert decision.reasons[0].startswith("welfare_ratio (higher is better) improves beyond its interval")
    assert resolve(NAME, "champion").version == trained.version

    data = ["--data", "synthetic.n_users=60", "--data", "synthetic.n_items=80", "--data", "synthetic.seed=2"]
    assert (
        main(
            ["evaluate", f"models:/{NAME}@champion", *data, "--auctions", str(held_out), "--resamples", "50"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "welfare_ratio" in out and "realized_revenue" in out

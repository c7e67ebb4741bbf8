"""LCRON cascade training: both stages trained as one network, exported and registered separately."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from rankforge.bundles.registry import download_bundle
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.train import run_training
from rankforge.training.batches import CascadeBatches, FeatureTables, NegativeSampler
from rankforge.training.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_cascade_batches_are_candidate_lists(small_data: PreparedData) -> None:
    tables = FeatureTables.build(small_data)
    batches = CascadeBatches(
        small_data, tables, NegativeSampler(tables.item_events, "uniform"), 5, 16, seed=0
    )
    batch = next(iter(batches))
    assert batch.labels.shape == (16, 6) and batch.mask.shape == (16, 6)
    assert torch.equal(batch.labels[:, 0], torch.ones(16)) and batch.labels[:, 1:].sum() == 0
    assert batch.mask[:, 0].all()
    assert batch.user.stride() == 16 and batch.items.stride() == 16 * 6 and batch.sparse.stride() == 16 * 6
    assert batch.dense.shape == (16 * 6, 4)


@pytest.mark.slow
def test_cascade_job_trains_both_stages_with_lcron(rankforge_home: Path, tmp_path: Path) -> None:
    config = load_config(REPO / "configs/cascade.toml")
    synthetic = config.data.synthetic.model_copy(update={"n_users": 80, "n_items": 120})
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"synthetic": synthetic}),
            "training": config.training.model_copy(update={"epochs": 3}),
            "output_dir": tmp_path / "job",
            "mlflow": config.mlflow.model_copy(update={"registered_model": "rf-cascade"}),
        }
    )
    result = run_training(config)
    assert [(r.name, r.version) for r in result.stages] == [
        ("rf-cascade-retrieval", 1),
        ("rf-cascade-ranker", 1),
    ]
    losses = [e.loss for e in result.epochs]
    assert losses[-1] < losses[0]
    assert {"retrieval_recall@10", "ranker_auc"} <= set(result.metrics)
    retrieval = download_bundle("models:/rf-cascade-retrieval@champion", tmp_path / "r")
    ranker = download_bundle("models:/rf-cascade-ranker@champion", tmp_path / "k")
    assert retrieval.manifest.kind == "retrieval" and ranker.manifest.kind == "ranker"
    assert retrieval.manifest.metrics["recall@10"] == result.metrics["retrieval_recall@10"]
    assert ranker.manifest.metrics["auc"] == result.metrics["ranker_auc"]
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["objective.name"] == "lcron"
    assert run.data.params["model.kind"] == "cascade"

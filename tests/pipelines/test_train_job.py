"""End to end: config file -> trained model -> MLflow run with metrics -> registered ONNX bundle."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.onnx_export import run_onnx
from rankforge.bundles.registry import resolve
from rankforge.cli import main
from rankforge.pipelines.train import run_training
from rankforge.settings import Settings
from rankforge.training.config import load_config

RETRIEVAL = """
seed = 1
output_dir = "{out}"
[data]
validation_fraction = 0.1
[data.synthetic]
n_users = 60
n_items = 90
seed = 3
[model]
kind = "retrieval"
embedding_dim = 8
tower_sizes = [16, 8]
[objective]
name = "sampled_softmax"
params = {{ temperature = 0.2 }}
[training]
epochs = 2
batch_size = 128
[negatives]
count = 8
distribution = "popularity"
[mlflow]
experiment = "train-job-test"
"""

RANKING_YAML = """
output_dir: {out}
data: {{synthetic: {{n_users: 60, n_items: 90, seed: 3}}, validation_fraction: 0.2}}
model: {{kind: ranking, embedding_dim: 8, dense_sizes: [8], over_sizes: [16, 1]}}
objective: {{name: bce}}
training: {{epochs: 1, batch_size: 256}}
negatives: {{count: 2}}
mlflow: {{experiment: train-job-test, registered_model: test-ranker}}
"""


@pytest.mark.slow
def test_retrieval_job_tracks_registers_and_exports(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "retrieval.toml"
    path.write_text(RETRIEVAL.format(out=tmp_path / "job"))
    result = run_training(load_config(path))

    assert result.registered is not None
    assert (result.registered.name, result.registered.version) == ("rankforge-retrieval", 1)
    assert resolve("rankforge-retrieval", "champion").version == 1  # first version: champion
    mlflow.set_tracking_uri(Settings.from_env().tracking_uri)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.kind"] == "retrieval"
    assert run.data.tags["mlflow.runName"] == "retrieval sampled_softmax synthetic"
    assert run.data.params["negatives.count"] == "8"
    history = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    assert history[1].value < history[0].value
    # validation (carved from training) every epoch; the test set once, at the end
    assert [m.step for m in client.get_metric_history(result.run_id, "val_recall_at_10")] == [1, 2]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_ndcg_at_20")] == [1, 2]
    assert len(client.get_metric_history(result.run_id, "test_recall_at_20")) == 1
    assert run.data.metrics["test_recall_at_20"] == pytest.approx(result.metrics["recall@20"])
    assert run.data.metrics["best_epoch"] == result.metrics["best_epoch"] in (1.0, 2.0)
    assert 0.0 <= result.metrics["recall@10"] <= result.metrics["recall@20"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "config")}
    assert {"config/retrieval.toml", "config/resolved.json"} <= artifacts

    # the registered bundle's ONNX item tower reproduces the torch item embeddings it shipped with
    bundle = load_bundle(result.bundle_dir, expect="retrieval")
    assert bundle.manifest.metrics == result.metrics
    items = load_config(path).data
    from rankforge.features.pipeline import prepare
    from rankforge.models.inputs import side_inputs

    data = prepare(items)
    feed = {k: v.numpy() for k, v in side_inputs(data.item_features, data.inputs, "item").items()}
    np.testing.assert_allclose(
        run_onnx(bundle.path("item_tower.onnx"), feed), bundle.item_embeddings(), atol=1e-5
    )

    # the version carries its data: source and id-mapping digest
    version = client.get_model_version("rankforge-retrieval", "1")
    assert version.tags["rankforge.id_mapping"] == bundle.manifest.data_fingerprint["id_mapping"]
    assert version.tags["rankforge.data"].startswith("synthetic(users=60, items=90, seed=3)")

    # the same config again trains the very same model: no duplicate version
    assert main(["train", str(path)]) == 0  # the same config again trains the very same model
    assert "rankforge-retrieval version 1 (identical model: not registered again)" in capsys.readouterr().out
    same = run_training(load_config(path))
    assert same.registered is not None and same.registered.duplicate and same.registered.version == 1
    # a changed job (another seed) registers version 2 and leaves the alias to the evaluation job
    path.write_text(RETRIEVAL.format(out=tmp_path / "job").replace("seed = 1", "seed = 2", 1))
    again = run_training(load_config(path))
    assert again.registered is not None and again.registered.version == 2 and not again.registered.duplicate
    assert again.run_id != result.run_id
    assert resolve("rankforge-retrieval", "champion").version == 1


@pytest.mark.slow
def test_cli_trains_a_ranker_from_yaml(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ranking.yaml"
    path.write_text(RANKING_YAML.format(out=tmp_path / "job"))
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test-ranker version 1" in out
    assert out.splitlines()[-1].startswith("browse it: mlflow ui --backend-store-uri sqlite:")
    bundle = load_bundle(tmp_path / "job" / "bundle", expect="ranker")
    assert bundle.manifest.dense_features
    assert resolve("test-ranker", "champion").version == 1
    # test metrics of the ranker (the epoch selected by validation AUC) travel with its bundle
    assert bundle.manifest.metrics["best_epoch"] == 1.0
    assert 0.0 <= bundle.manifest.metrics["best_val_auc"] <= 1.0
    assert 0.0 <= bundle.manifest.metrics["auc"] <= 1.0
    assert bundle.manifest.metrics["logloss"] > 0.0


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nkind = "retrieval"\nembeding_dim = 8\n[objective]\nname = "sampled_softmax"\n')
    assert main(["train", str(path)]) == 2
    assert "unknown key 'model.embeding_dim'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_command_prints_its_result_not_library_chatter(rankforge_home: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "retrieval.toml"
    path.write_text(RETRIEVAL.format(out=tmp_path / "job"))
    env = {k: v for k, v in os.environ.items() if k != "RANKFORGE_VERBOSE"}
    done = subprocess.run(
        [sys.executable, "-m", "rankforge.cli", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith("run ")
    noise = [line for line in done.stderr.splitlines() if "Warning" in line or "torchvision" in line]
    assert noise == [], noise[:5]


def test_matrix_factorisation_with_the_default_fused_table_optimizer_trains(
    rankforge_home: Path, tmp_path: Path
) -> None:
    """MF has no dense layer: every parameter is a fused table, so there is no dense optimizer to
    build (it used to fail with torch's "optimizer got an empty parameter list")."""
    from rankforge.training.config import parse_config

    config = parse_config(
        {
            "output_dir": str(tmp_path / "mf"),
            "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}, "validation_fraction": 0.1},
            "model": {"kind": "mf", "embedding_dim": 8},
            "objective": {"name": "ccl"},
            "training": {"epochs": 2, "batch_size": 64},
            "negatives": {"count": 8},
            "mlflow": {"register_model": False, "experiment": "mf-adagrad"},
        }
    )
    result = run_training(config)
    assert result.epochs[1].loss < result.epochs[0].loss and result.metrics["recall@20"] > 0

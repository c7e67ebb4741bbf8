from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import PreparedData
from rankforge.models.two_tower import TwoTower, item_features, user_features
from rankforge.pipelines.registry import download_bundle, log_and_register, parse_model_uri, resolve
from rankforge.serving.export_bundle import build_retrieval_bundle
from rankforge.settings import Settings, configure_mlflow


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/rankforge-ranker@champion") == ("rankforge-ranker", "champion")
    assert parse_model_uri("models:/rankforge-ranker/3") == ("rankforge-ranker", "3")
    for bad in ("runs:/abc/model", "models:/nameonly", "models:/@x"):
        with pytest.raises(ConfigError):
            parse_model_uri(bad)


def test_register_resolve_and_download(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    d = small_data
    torch.manual_seed(0)
    model = TwoTower(user_features(d.n_users, d.n_items, d.history_len), item_features(d.n_items, d.n_genres))
    bundle_dir = tmp_path / "bundle"
    build_retrieval_bundle(model, d, str(bundle_dir), max_genres=8, metrics={"recall@10": 0.5})
    settings = Settings.from_env()
    assert settings.tracking_uri == f"sqlite:///{rankforge_home.resolve() / 'mlflow.db'}"
    configure_mlflow(settings, "registry-test")
    with mlflow.start_run():
        first = log_and_register(bundle_dir, "rf-test", alias="champion")
    with mlflow.start_run():
        second = log_and_register(bundle_dir, "rf-test")
    assert (first.version, second.version) == (1, 2)
    assert resolve("rf-test", "champion").version == 1
    assert resolve("rf-test", 2).run_id == second.run_id
    fetched = download_bundle("models:/rf-test@champion", tmp_path / "dl")
    assert fetched.manifest.metrics == {"recall@10": 0.5}
    np.testing.assert_array_equal(fetched.item_embeddings(), np.load(bundle_dir / "item_embeddings.npy"))
    # the ONNX flavor is loadable by MLflow itself
    onnx_model = mlflow.onnx.load_model(f"models:/rf-test/{first.version}")
    assert [i.name for i in onnx_model.graph.input] == ["user_id", "user_history"]
    with pytest.raises(ConfigError, match="no registered model 'rf-test' at 'nope'"):
        resolve("rf-test", "nope")


def test_download_bundle_from_bad_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a model bundle"):
        download_bundle(tmp_path)

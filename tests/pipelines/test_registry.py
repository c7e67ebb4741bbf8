from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_retrieval_bundle
from rankforge.bundles.registry import (
    download_bundle,
    log_and_register,
    parse_model_uri,
    resolve,
    run_artifact_path,
)
from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import sparse_features
from rankforge.models.two_tower import TwoTower
from rankforge.settings import Settings, configure_mlflow

from .conftest import random_ranker_bundle


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
    model = TwoTower(sparse_features(d.inputs, "user"), sparse_features(d.inputs, "item"))
    bundle_dir = tmp_path / "bundle"
    build_retrieval_bundle(model, d, str(bundle_dir), metrics={"recall@10": 0.5})
    settings = Settings.from_env()
    assert settings.tracking_uri == f"sqlite:///{rankforge_home.resolve() / 'mlflow.db'}"
    configure_mlflow(settings, "registry-test")
    with mlflow.start_run():
        first = log_and_register(bundle_dir, "rf-test", alias="champion")
    with mlflow.start_run():
        duplicate = log_and_register(bundle_dir, "rf-test")
    assert (duplicate.version, duplicate.duplicate) == (1, True)  # the same bundle: no new version
    changed = tmp_path / "changed"
    build_retrieval_bundle(model, d, str(changed), metrics={"recall@10": 0.6})
    with mlflow.start_run():
        second = log_and_register(changed, "rf-test")
    assert (first.version, second.version) == (1, 2)
    assert resolve("rf-test", "champion").version == 1
    assert resolve("rf-test", 2).run_id == second.run_id
    fetched = download_bundle("models:/rf-test@champion", tmp_path / "dl")
    assert fetched.manifest.metrics == {"recall@10": 0.5}
    np.testing.assert_array_equal(fetched.item_embeddings(), np.load(bundle_dir / "item_embeddings.npy"))
    # the ONNX graph is loadable by MLflow's ONNX flavor (its URI is tagged on the version)
    version = mlflow.MlflowClient().get_model_version("rf-test", str(first.version))
    onnx_model = mlflow.onnx.load_model(version.tags["rankforge.onnx_model"])
    assert [i.name for i in onnx_model.graph.input] == ["user_id", "user_history"]
    # and the registered model takes raw ids, as MLflow users expect
    loaded = mlflow.pyfunc.load_model(f"models:/rf-test/{first.version}")
    assert loaded.metadata.signature is not None
    assert [c.name for c in loaded.metadata.signature.inputs] == ["user_id", "k", "history"]
    raw_user = int(d.mapping.users["user_id"][0])
    top = loaded.predict(pd.DataFrame({"user_id": [raw_user], "k": [3]}))
    assert list(top.columns) == ["user_id", "rank", "item_id", "score"] and list(top["rank"]) == [1, 2, 3]
    best = int(top["item_id"][0])  # a known item is never recommended back
    again = loaded.predict(pd.DataFrame({"user_id": [raw_user], "k": [3], "history": [[best]]}))
    assert best not in set(again["item_id"])
    vectors = fetched.item_embeddings()
    known = set(d.mapping.items["item_id"].to_list())
    assert set(top["item_id"]) <= known and top["score"].is_monotonic_decreasing
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs \\['user_id'\\]"):
        loaded.predict(pd.DataFrame({"user": [raw_user]}))  # the signature names what is missing
    assert vectors.shape[0] == d.n_items
    with pytest.raises(ConfigError, match="no registered model 'rf-test' at 'nope'"):
        resolve("rf-test", "nope")


def test_download_bundle_from_bad_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a model bundle"):
        download_bundle(tmp_path)


def test_registered_ranker_predicts_from_raw_ids(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    from rankforge.pipelines.bundle_scoring import ranker_probabilities

    from .conftest import random_ranker_bundle

    d = small_data
    bundle_dir = random_ranker_bundle(d, tmp_path / "ranker")
    configure_mlflow(Settings.from_env(), "registry-test")
    with mlflow.start_run():
        registered = log_and_register(bundle_dir, "rf-ranker")
    loaded = mlflow.pyfunc.load_model(registered.model_uri)
    pairs = d.test_events.head(6).select("user_idx", "item_idx")
    keep = {"how": "left", "maintain_order": "left"}  # rows stay in the order of `pairs`
    features = pairs.join(d.user_features, on="user_idx", **keep).join(
        d.item_features, on="item_idx", suffix="_item", **keep
    )
    raw = features.join(d.mapping.users, on="user_idx", **keep)
    frame = raw.select("user_id", "item_id", *load_bundle(bundle_dir).manifest.dense_features).to_pandas()
    frame["item_genres"] = [list(g) for g in raw["item_genres"].to_list()]
    frame["history"] = [
        d.mapping.items.filter(pl.col("item_idx").is_in(h))["item_id"].to_list()
        for h in raw["history"].to_list()
    ]
    got = loaded.predict(frame)
    assert list(got.columns) == ["logit", "probability"]
    expected = ranker_probabilities(load_bundle(bundle_dir), pairs, d)
    np.testing.assert_allclose(got["probability"].to_numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "path", ["../../../..", "/etc", "bundle/../../x", "C:/x", "s3://bucket/x", "a\\..\\b", ""]
)
def test_artifact_paths_outside_the_run_are_refused(path: str) -> None:
    with pytest.raises(DataError, match="is not a path inside the run's artifacts"):
        run_artifact_path(path, "m/1")
    assert run_artifact_path("bundle_ranker", "m/1") == "bundle_ranker"


def test_a_tampered_bundle_artifact_tag_is_not_followed(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "registry-tamper-test")
    with mlflow.start_run():
        version = log_and_register(random_ranker_bundle(small_data, tmp_path / "b"), "rf-tamper").version
    MlflowClient().set_model_version_tag("rf-tamper", str(version), "bundle_artifact", "../../../..")
    with pytest.raises(DataError, match=r"rf-tamper/1: bundle_artifact '\.\./\.\./\.\./\.\.' is not a path"):
        download_bundle(f"models:/rf-tamper/{version}", tmp_path / "dl")

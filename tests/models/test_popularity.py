"""The most-popular baseline: counted, not trained, and exported/served like any retrieval model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_retrieval_bundle
from rankforge.bundles.onnx_export import run_onnx
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import side_inputs
from rankforge.models.popularity import MostPopular
from rankforge.training.batches import FeatureTables


def test_popularity_bundle_scores_items_by_training_counts(small_data: PreparedData, tmp_path: Path) -> None:
    d = small_data
    model = MostPopular(FeatureTables.build(d).item_events)
    build_retrieval_bundle(model, d, str(tmp_path))
    bundle = load_bundle(tmp_path, expect="retrieval")
    counts = (
        pl.DataFrame({"item_idx": range(d.n_items)}, schema={"item_idx": pl.Int64})
        .join(d.train_events.group_by("item_idx").len(), on="item_idx", how="left")
        .sort("item_idx")["len"]
        .fill_null(0)
        .to_numpy()
    )
    np.testing.assert_allclose(bundle.item_embeddings()[:, 0], np.log1p(counts), rtol=1e-6)
    items = side_inputs(d.item_features, d.inputs, "item")
    np.testing.assert_allclose(
        run_onnx(bundle.path("item_tower.onnx"), {"item_id": items["item_id"].numpy()})[:, 0],
        np.log1p(counts),
        rtol=1e-6,
    )
    users = side_inputs(d.user_features.head(5), d.inputs, "user")
    np.testing.assert_array_equal(
        run_onnx(bundle.path("user_tower.onnx"), {"user_id": users["user_id"].numpy()}), 1.0
    )
    assert bundle.manifest.inputs["user_tower.onnx"] == ["user_id"]


@pytest.mark.slow
def test_popularity_job_needs_no_objective_and_is_tracked(rankforge_home: Path, tmp_path: Path) -> None:
    from rankforge.pipelines.train import run_training
    from rankforge.training.config import parse_config

    config = parse_config(
        {
            "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
            "model": {"kind": "popularity"},
            "output_dir": str(tmp_path / "job"),
            "mlflow": {"experiment": "popularity-test"},
        }
    )
    result = run_training(config)
    assert result.registered is not None and result.registered.name == "rankforge-retrieval"
    assert 0.0 < result.metrics["recall@20"] <= 1.0
    assert load_bundle(result.bundle_dir).manifest.metrics == result.metrics
    with pytest.raises(ValueError, match="trains nothing"):
        parse_config({"model": {"kind": "popularity"}, "objective": {"name": "ccl"}})
    with pytest.raises(ValueError, match="objective is required"):
        parse_config({"model": {"kind": "mf"}})

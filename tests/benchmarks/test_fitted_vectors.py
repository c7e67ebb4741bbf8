"""The fitted catalogue generator keeps its source's clusters, their sizes and their shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankforge.benchmarks.ann_index import catalogue, fitted_vectors
from rankforge.bundles.export import build_retrieval_bundle
from rankforge.features.pipeline import DataConfig, SyntheticConfig, prepare
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.scoring import Scoring


def _two_clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3:1 sized clusters in 8 dims: one spread along axis 0 only, one round."""
    a = np.zeros((3000, 8)) + np.r_[5.0, np.zeros(7)]
    a[:, 0] += 1.0 * rng.normal(size=3000)
    a[:, 1:] += 0.1 * rng.normal(size=(3000, 7))
    b = np.r_[np.zeros(4), -5.0, np.zeros(3)] + 0.5 * rng.normal(size=(1000, 8))
    return a.astype(np.float32), b.astype(np.float32)


def test_fitted_keeps_cluster_sizes_means_and_shapes() -> None:
    a, b = _two_clusters(np.random.default_rng(0))
    out = fitted_vectors(40_000, np.vstack([a, b]), Scoring("dot"), clusters=2, seed=1)
    assert out.shape == (40_000, 8) and out.dtype == np.float32
    in_a = out[:, 4] > -2.5  # cluster b sits at -5 on axis 4, a at 0
    assert in_a.mean() == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(out[in_a].mean(0), a.mean(0), atol=0.05)
    np.testing.assert_allclose(out[~in_a].mean(0), b.mean(0), atol=0.05)
    # the elongated cluster stays elongated along its own axis, the round one round
    np.testing.assert_allclose(out[in_a].std(0)[:2], a.std(0)[:2], rtol=0.05)
    np.testing.assert_allclose(out[~in_a].std(0), b.std(0), rtol=0.1)


def test_fitted_rows_are_in_the_models_scoring_space() -> None:
    a, b = _two_clusters(np.random.default_rng(2))
    source = np.vstack([a, b])
    cosine = fitted_vectors(500, source, Scoring("cosine"), clusters=4)
    assert np.allclose(np.linalg.norm(cosine, axis=1), 1.0, atol=1e-5)
    dot = fitted_vectors(500, source, Scoring("dot"), clusters=4)
    assert not np.allclose(np.linalg.norm(dot, axis=1), 1.0)


def test_fitted_catalogue_needs_a_retrieval_bundle(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--fit-from"):
        catalogue(10, 8, "fitted")
    with pytest.raises(SystemExit, match=r"--fit-from: not a model bundle"):
        catalogue(10, 8, "fitted", tmp_path)
    data = prepare(DataConfig(synthetic=SyntheticConfig(n_users=30, n_items=300)))
    torch.manual_seed(0)
    model = MatrixFactorization(data.n_users, data.n_items, 6, scoring=Scoring("cosine"))
    build_retrieval_bundle(model, data, str(tmp_path))
    fitted = catalogue(50, 64, "fitted", tmp_path)
    assert fitted.shape == (50, 6)  # the bundle's dimension, not the one asked for
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1.0, atol=1e-5)  # its scoring: cosine

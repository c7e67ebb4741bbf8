"""The fitted catalogue generator keeps its source's clusters, their sizes and their shapes."""

from __future__ import annotations

import numpy as np
import pytest

from rankforge.benchmarks.ann_index import catalogue, fitted_vectors


def _two_clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3:1 sized clusters in 8 dims: one spread along axis 0 only, one round."""
    a = np.zeros((3000, 8)) + np.r_[5.0, np.zeros(7)]
    a[:, 0] += 1.0 * rng.normal(size=3000)
    a[:, 1:] += 0.1 * rng.normal(size=(3000, 7))
    b = np.r_[np.zeros(4), -5.0, np.zeros(3)] + 0.5 * rng.normal(size=(1000, 8))
    return a.astype(np.float32), b.astype(np.float32)


def test_fitted_keeps_cluster_sizes_means_and_shapes() -> None:
    a, b = _two_clusters(np.random.default_rng(0))
    out = fitted_vectors(40_000, np.vstack([a, b]), clusters=2, seed=1)
    assert out.shape == (40_000, 8) and out.dtype == np.float32
    in_a = out[:, 4] > -2.5  # cluster b sits at -5 on axis 4, a at 0
    assert in_a.mean() == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(out[in_a].mean(0), a.mean(0), atol=0.05)
    np.testing.assert_allclose(out[~in_a].mean(0), b.mean(0), atol=0.05)
    # the elongated cluster stays elongated along its own axis, the round one round
    np.testing.assert_allclose(out[in_a].std(0)[:2], a.std(0)[:2], rtol=0.05)
    np.testing.assert_allclose(out[~in_a].std(0), b.std(0), rtol=0.1)


def test_fitted_rows_are_unit_when_the_source_is() -> None:
    a, b = _two_clusters(np.random.default_rng(2))
    unit = np.vstack([a, b])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(fitted_vectors(500, unit, clusters=4), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(fitted_vectors(500, np.vstack([a, b]), clusters=4), axis=1), 1.0)


def test_fitted_catalogue_needs_a_bundle_with_item_vectors(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--fit-from"):
        catalogue(10, 8, "fitted")
    with pytest.raises(SystemExit, match=r"no item_embeddings\.npy"):
        catalogue(10, 8, "fitted", tmp_path)
    np.save(
        tmp_path / "item_embeddings.npy", np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    )
    assert catalogue(50, 64, "fitted", tmp_path).shape == (50, 6)

"""Served recall: retrieval metrics through an index's search, as a served request ranks, and the
export's refusal of an index that loses more of it than the config allows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rankforge.bundles.ann_index import INDEX_FILE, IndexConfig, ServedRecall, export_index
from rankforge.bundles.candidate_index import ExactInnerProductIndex
from rankforge.errors import DataError
from rankforge.evaluation.metrics import retrieval_metrics
from rankforge.training.validation import _exact, _searched


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, sp.csr_matrix, sp.csr_matrix]:
    g = np.random.default_rng(seed)
    n_users, n_items, d = 50, 400, 8
    centers = g.normal(size=(10, d))
    items = torch.from_numpy(centers[g.integers(10, size=n_items)] + 0.3 * g.normal(size=(n_items, d)))
    queries = torch.from_numpy(g.normal(size=(n_users, d)))
    # held-out items the model half finds: some of each user's 40 best, some at random
    best = np.argsort(-(queries @ items.T).numpy(), axis=1)[:, :40]
    held = np.zeros((n_users, n_items), dtype=bool)
    np.put_along_axis(held, best, g.random(best.shape) < 0.2, axis=1)
    held |= g.random((n_users, n_items)) < 0.01
    exclude = (g.random((n_users, n_items)) < 0.05) & ~held
    return queries.float(), items.float(), sp.csr_matrix(held), sp.csr_matrix(exclude)


def test_search_by_exact_index_gives_the_exact_metrics() -> None:
    """Ranking only what an exact search retrieves (asking for k plus the known items) is the
    full ranking: the same metrics to the last digit."""
    queries, items, relevant, exclude = _problem()
    exact = ExactInnerProductIndex(items.numpy())
    counts = torch.from_numpy(np.diff(exclude.indptr))
    full = retrieval_metrics(_exact(queries, items), relevant, exclude, ks=(10, 20), batch_size=16)
    searched = retrieval_metrics(
        _searched(exact.search, queries, items, counts, 20), relevant, exclude, ks=(10, 20), batch_size=16
    )
    assert searched == pytest.approx(full, abs=1e-12)
    assert full["recall@20"] > 0


def test_a_poor_index_serves_less_recall() -> None:
    """An index that never finds half of the catalogue (exact search over the other half)."""
    queries, items, relevant, exclude = _problem(1)
    kept = np.sort(np.random.default_rng(2).permutation(len(items))[: len(items) // 2])
    half = ExactInnerProductIndex(items.numpy()[kept])
    counts = torch.from_numpy(np.diff(exclude.indptr))

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = half.search(q, k)
        return kept[rows], scores

    full = retrieval_metrics(_exact(queries, items), relevant, exclude, ks=(20,))
    served = retrieval_metrics(_searched(search, queries, items, counts, 20), relevant, exclude, ks=(20,))
    assert 0 < served["recall@20"] < full["recall@20"]


def test_served_recall_loss_is_relative() -> None:
    assert ServedRecall("validation", 20, 0.18, 0.20).loss == pytest.approx(1 - 0.18 / 0.20)
    assert ServedRecall("validation", 20, 0.21, 0.20).loss == 0.0  # an index cannot gain
    assert ServedRecall("test", 20, 0.0, 0.0).loss == 0.0


def test_export_refuses_an_index_that_loses_served_recall(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, items, _, _ = _problem()
    vectors = items.numpy()
    config = IndexConfig(kind="hnsw", recall_k=20, max_served_recall_loss=0.01)

    def losing(index, k: int) -> ServedRecall:  # what the job measured: 5% lost
        assert k == 20 and index.size == len(vectors)
        return ServedRecall("validation", k, 0.190, 0.200)

    with pytest.raises(
        DataError,
        match=r"hnsw index loses 5\.0% of validation Recall@20 through retrieval \(0\.1900 vs exact",
    ):
        export_index(vectors, config, tmp_path, losing)
    assert not (tmp_path / INDEX_FILE).exists()
    with caplog.at_level(logging.WARNING):
        record = export_index(vectors, config.model_copy(update={"on_low_recall": "warn"}), tmp_path, losing)
    assert record["served_recall"] == {
        "split": "validation",
        "k": 20,
        "ann": 0.19,
        "exact": 0.2,
        "loss": 0.05,
        "max_loss": 0.01,
    }
    assert any("max_served_recall_loss" in r.getMessage() for r in caplog.records)

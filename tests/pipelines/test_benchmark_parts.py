"""The measuring parts of the retraining and cascade benchmarks, on small data (the benchmarks
themselves are run by hand and recorded in benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.benchmarks.cascade_movielens import cascade_recall
from rankforge.benchmarks.confidence_ranking_movielens import cut_periods, user_resamples
from rankforge.bundles.bundle import load_bundle
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.bundle_scoring import BundleIds, ranker_probabilities, user_vectors

from .conftest import random_ranker_bundle, random_retrieval_bundle


@pytest.fixture(scope="module")
def cascade_bundles(eval_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cascade")
    return (
        random_retrieval_bundle(eval_data, root / "retrieval", seed=1),
        random_ranker_bundle(eval_data, root / "ranker", seed=2),
    )


def test_cascade_recall_matches_a_user_by_user_funnel(
    eval_data: PreparedData, cascade_bundles: tuple[Path, Path]
) -> None:
    retrieval, ranker = (load_bundle(p) for p in cascade_bundles)
    k1, k2 = 20, 5
    got = cascade_recall(retrieval, ranker, eval_data, k1, k2)

    test = eval_data.test_positives()
    known = eval_data.known_events()
    embeddings = retrieval.item_embeddings()
    ids = BundleIds.of(retrieval)
    vectors = user_vectors(retrieval, ids, got.users, eval_data)
    for row, raw_user in enumerate(got.users):
        user_idx = eval_data.mapping.users.filter(pl.col("user_id") == raw_user)["user_idx"].item()
        seen = set(known.filter(pl.col("user_idx") == user_idx)["item_idx"].to_list())
        relevant = set(test.filter(pl.col("user_idx") == user_idx)["item_idx"].to_list()) - seen
        scores = embeddings @ vectors[row]
        scores[list(seen)] = -np.inf
        first = np.argsort(-scores, kind="stable")[:k1]
        pairs = pl.DataFrame({"user_idx": [user_idx] * k1, "item_idx": first})
        probs = ranker_probabilities(ranker, pairs, eval_data)
        final = first[np.argsort(-probs, kind="stable")[:k2]]
        assert got.retrieval[row] == pytest.approx(len(relevant & set(first.tolist())) / len(relevant))
        assert got.end_to_end[row] == pytest.approx(len(relevant & set(final.tolist())) / len(relevant))


def test_a_funnel_that_keeps_everything_it_retrieves_is_retrieval_recall(
    eval_data: PreparedData, cascade_bundles: tuple[Path, Path]
) -> None:
    retrieval, ranker = (load_bundle(p) for p in cascade_bundles)
    got = cascade_recall(retrieval, ranker, eval_data, 15, 15)
    np.testing.assert_array_equal(got.end_to_end, got.retrieval)
    with pytest.raises(ValueError, match="need 0 < k2 <= k1"):
        cascade_recall(retrieval, ranker, eval_data, 5, 10)


def test_periods_cut_the_log_by_time(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"] + [
        f"{i % 7},{i % 11},{1 + i % 5}.0,{1000 + i}" for i in range(100)
    ]
    ratings.write_text("\n".join(rows) + "\n")
    periods = cut_periods(ratings, tmp_path / "logs")
    assert periods.counts == (60, 20, 20) and sum(periods.counts) == 100
    previous = pl.read_parquet(periods.previous_events)["timestamp"]
    assert (
        previous.len() == 80
        and not ((previous >= periods.period_2_from) & (previous < periods.period_3_from)).any()
    )
    assert pl.read_parquet(periods.all_events).height == 100


def test_user_resamples_keep_each_users_events_together() -> None:
    users = np.array([0, 0, 0, 3, 3, 7])
    for rows, groups in user_resamples(users, 20, seed=1):
        assert len(rows) == len(groups)
        for g in np.unique(groups):
            drawn = users[rows[groups == g]]
            assert len(np.unique(drawn)) == 1 and len(drawn) == (users == drawn[0]).sum()
        assert len(np.unique(groups)) == 3  # as many users drawn as there are

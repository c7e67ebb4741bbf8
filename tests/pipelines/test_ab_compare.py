"""Champion vs challenger on hand-made bundles whose metrics are known before the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.bundles.bundle import load_bundle, seal
from rankforge.errors import ConfigError
from rankforge.evaluation.bootstrap import Interval
from rankforge.evaluation.replay import dr_value
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.ab_compare import ABConfig, compare
from rankforge.pipelines.bundle_scoring import slate_scores
from rankforge.pipelines.replay_log import as_log, build_replay_log, policy_probabilities

from .conftest import random_ranker_bundle
from .crafted_bundles import perfect_retrieval_bundle, random_retrieval_bundle

FAST = ABConfig(n_resamples=200)
SLATE = 10


def test_perfect_challenger_against_random_champion(small_data: PreparedData, tmp_path: Path) -> None:
    perfect = load_bundle(perfect_retrieval_bundle(small_data, tmp_path / "perfect"))
    random = load_bundle(random_retrieval_bundle(small_data, tmp_path / "random"))
    log = build_replay_log(small_data, slate_size=SLATE, seed=0)
    report = compare(random, perfect, small_data, log, FAST)

    for name in ("recall@10", "ndcg@10", "hitrate@20", "mrr@20"):
        assert report.challenger.metrics[name] == pytest.approx(1.0)
        delta = report.deltas[name]
        assert delta.estimate == pytest.approx(1.0 - report.champion.metrics[name])
        assert delta.low > 0, name  # beyond its interval: the promotion rule would accept it
    # the perfect greedy policy always picks the held-out item: every matched event has reward 1,
    # and IPS weighs each rewarded event by 1 / propensity = slate size
    assert report.challenger.metrics["replay_replay"] == 1.0
    assert report.challenger.metrics["replay_snips"] == 1.0
    assert report.challenger.metrics["replay_ips"] == pytest.approx(SLATE * log["reward"].mean())
    assert report.reward_model == "item positive rate"
    # each model's own bootstrap intervals: a constant per-user value has a zero-width interval
    assert report.challenger.intervals["recall@10"] == Interval(1.0, 1.0, 1.0)
    old = report.champion.intervals["ndcg@20"]
    assert old.low < old.estimate == report.champion.metrics["ndcg@20"] < old.high
    assert report.to_json()["champion"]["intervals"]["ndcg@20"]["low"] == old.low
    assert report.to_json()["challenger"]["dropped_items"] == 0

    same = compare(perfect, perfect, small_data, log, FAST)
    finite = {n: d for n, d in same.deltas.items() if np.isfinite(d.low)}
    assert "recall@10" in finite and "replay_dr" in finite
    assert all((d.estimate, d.low, d.high) == (0.0, 0.0, 0.0) for d in finite.values())


@pytest.fixture(scope="module")
def ranker_dir(small_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_ranker_bundle(small_data, tmp_path_factory.mktemp("ranker"), seed=0)


def test_ranker_events_with_unknown_items_are_dropped_and_counted(
    small_data: PreparedData, ranker_dir: Path, tmp_path: Path
) -> None:
    # the same ranker, but its id mapping no longer knows the first five held-out items
    shifted = tmp_path / "shifted"
    shutil.copytree(ranker_dir, shifted)
    gone = small_data.test_events["item_id"].unique().sort().head(5)
    items = pl.read_parquet(shifted / "id_mapping/items.parquet")
    items = items.with_columns(
        pl.when(pl.col("item_id").is_in(gone.implode())).then(pl.col("item_id") + 10**9).otherwise("item_id")
    )
    items.write_parquet(shifted / "id_mapping/items.parquet")
    seal(shifted)  # a deliberately different bundle, not a damaged one
    expected_dropped = small_data.test_events.filter(pl.col("item_id").is_in(gone.implode())).height
    assert expected_dropped >= 5

    champion, challenger = load_bundle(ranker_dir), load_bundle(shifted)
    log = build_replay_log(small_data, slate_size=SLATE, seed=0)
    report = compare(champion, challenger, small_data, log, FAST)
    assert report.champion.notes["dropped_item_events"] == 0
    assert report.challenger.notes["dropped_item_events"] == expected_dropped
    evaluated = small_data.test_events.height - expected_dropped
    assert (
        report.champion.notes["evaluated_events"] == report.challenger.notes["evaluated_events"] == evaluated
    )
    assert len(report.champion.curves["labels"]) == evaluated

    # DR's reward model defaults to the champion ranker's P(positive), shared by both models
    assert report.reward_model == "champion ranker"
    r_hat = slate_scores(champion, log, small_data)
    slates = np.stack(log["slate"].to_numpy())
    actions = np.argmax(slates == log["action"].to_numpy()[:, None], axis=1)
    probs, target = policy_probabilities(slate_scores(challenger, log, small_data), actions)
    expected = dr_value(as_log(log), target, r_hat[np.arange(len(log)), actions], (probs * r_hat).sum(axis=1))
    assert report.challenger.metrics["replay_dr"] == pytest.approx(expected)


def test_reward_model_must_be_a_ranker(small_data: PreparedData, ranker_dir: Path, tmp_path: Path) -> None:
    retrieval = perfect_retrieval_bundle(small_data, tmp_path / "perfect")
    log = build_replay_log(small_data, slate_size=SLATE, seed=0)
    bundle = load_bundle(retrieval)
    with pytest.raises(ConfigError, match="not a ranker"):
        compare(bundle, bundle, small_data, log, ABConfig(n_resamples=20, reward_model=str(retrieval)))
    report = compare(bundle, bundle, small_data, log, ABConfig(n_resamples=20, reward_model=str(ranker_dir)))
    assert report.reward_model == str(ranker_dir)

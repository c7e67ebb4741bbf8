"""Promotion against the real MLflow registry (SQLite) with hand-made bundles of known quality."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.registry import log_and_register, resolve
from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig
from rankforge.features.synthetic import GENRES_FEATURE
from rankforge.pipelines.ab_compare import ABConfig, compare
from rankforge.pipelines.promote import (
    BELOW_FLOOR_TAG,
    Criterion,
    decide,
    latest_version,
    promote_if_better,
)
from rankforge.pipelines.replay_log import build_replay_log
from rankforge.settings import Settings, configure_mlflow

from .crafted_bundles import perfect_retrieval_bundle, random_retrieval_bundle, worst_retrieval_bundle

SMALL = DataConfig(
    synthetic=SyntheticConfig(n_users=60, n_items=90, seed=3), features=[GENRES_FEATURE]
)  # = the small_data fixture
FAST = ABConfig(n_resamples=200)
NAME = "rf-promote"


def _register(bundle: Path, alias: str | None = None) -> int:
    with mlflow.start_run():
        return log_and_register(bundle, NAME, alias=alias).version


def test_perfect_challenger_is_promoted_and_worse_or_equal_ones_are_not(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    assert small_data.n_users == 60 and small_data.n_items == 90  # SMALL describes the same data
    configure_mlflow(Settings.from_env(), "promote-test")
    random = _register(random_retrieval_bundle(small_data, tmp_path / "random"), alias="champion")
    perfect = _register(perfect_retrieval_bundle(small_data, tmp_path / "perfect"))

    decision = promote_if_better(NAME, perfect, SMALL, config=FAST)
    assert decision.promote and decision.applied
    assert (decision.champion_version, decision.challenger_version) == (random, perfect)
    assert [r.split(" ")[0] for r in decision.reasons] == ["recall@20", "ndcg@20"]
    assert all("improves beyond its interval" in r and "-> 1.0000" in r for r in decision.reasons)
    assert resolve(NAME, "champion").version == perfect
    assert resolve(NAME, "previous-champion").version == random
    run = MlflowClient().get_run(decision.report_run_id)
    assert run.data.tags["promotion.verdict"] == "promote"
    assert run.data.metrics["delta_recall_at_20_low"] > 0
    children = MlflowClient().search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    child = {c.data.tags["role"]: c.data.metrics for c in children}
    assert child["challenger"]["recall_at_20"] == child["challenger"]["recall_at_20_low"] == 1.0
    assert child["champion"]["recall_at_20_low"] < child["champion"]["recall_at_20"] < 1.0
    promotion = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/promotion.json")
    assert promotion["promote"] and promotion["reasons"] == decision.reasons

    # the random model challenging the perfect champion: refused, nothing moves
    worse = promote_if_better(NAME, random, SMALL, config=FAST)
    assert not worse.promote and not worse.applied
    criteria_lines = [r for r in worse.reasons if not r.startswith("refused: ")]
    assert len(criteria_lines) == 2 and all("does not improve" in r for r in criteria_lines)
    assert resolve(NAME, "champion").version == perfect
    assert resolve(NAME, "previous-champion").version == random  # still reachable

    # a byte-identical copy is not registered again: the registry returns the existing version
    assert _register(perfect_retrieval_bundle(small_data, tmp_path / "copy")) == perfect
    # the same model in a different bundle (an extra file): every delta is exactly 0, so no
    # interval lies above 0
    twin_dir = perfect_retrieval_bundle(small_data, tmp_path / "twin")
    (twin_dir / "NOTES.txt").write_text("same weights, rebuilt\n")
    twin = _register(twin_dir)
    assert twin != perfect
    tie = promote_if_better(NAME, twin, SMALL, config=FAST)
    assert not tie.promote and "delta +0.0000 [+0.0000, +0.0000]" in tie.reasons[0]
    assert resolve(NAME, "champion").version == perfect
    assert MlflowClient().get_model_version(NAME, str(twin)).tags["promotion"] == "keep champion"


def test_a_challenger_below_the_popularity_floor_is_refused_unless_overridden(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "promote-test")
    worst = _register(worst_retrieval_bundle(small_data, tmp_path / "worst"), alias="champion")
    random = _register(random_retrieval_bundle(small_data, tmp_path / "random"))
    report = compare(
        load_bundle(tmp_path / "worst"),
        load_bundle(tmp_path / "random"),
        small_data,
        build_replay_log(small_data, seed=0),
        FAST,
    )
    assert report.floor is not None and report.floor.label.startswith("popularity")
    # random beats the worst champion beyond its interval, but not most popular unseen items
    assert report.deltas["recall@20"].low > 0
    assert report.challenger.metrics["recall@20"] < report.floor.metrics["recall@20"]
    refused = promote_if_better(NAME, random, SMALL, config=FAST)
    assert not refused.promote and not refused.applied
    assert any(
        r.startswith("refused: recall@20: challenger") and "does not beat the floor" in r
        for r in refused.reasons
    )
    assert resolve(NAME, "champion").version == worst
    overridden = promote_if_better(NAME, random, SMALL, config=FAST, allow_below_floor=True)
    assert overridden.promote and overridden.applied and resolve(NAME, "champion").version == random
    assert any("overridden (--allow-below-floor)" in r for r in overridden.reasons)
    tag = MlflowClient().get_model_version(NAME, str(random)).tags[BELOW_FLOOR_TAG]
    assert tag.startswith("overridden by --allow-below-floor: recall@20: challenger")
    # a challenger above the floor carries no such tag
    perfect = _register(perfect_retrieval_bundle(small_data, tmp_path / "perfect"))
    assert promote_if_better(NAME, perfect, SMALL, config=FAST).applied
    assert BELOW_FLOOR_TAG not in MlflowClient().get_model_version(NAME, str(perfect)).tags


def test_without_a_champion_the_challenger_becomes_one(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "promote-test")
    first = _register(random_retrieval_bundle(small_data, tmp_path / "random"))
    dry = promote_if_better(NAME, "latest", SMALL, config=FAST, dry_run=True)
    assert dry.promote and not dry.applied and "no champion yet" in dry.reasons[0]
    with pytest.raises(ConfigError, match="no registered model"):
        resolve(NAME, "champion")
    decision = promote_if_better(NAME, "latest", SMALL, config=FAST)
    assert decision.applied and resolve(NAME, "champion").version == first


def test_criteria_directions(small_data: PreparedData, tmp_path: Path) -> None:
    assert Criterion.parse("logloss") == Criterion("logloss", higher_is_better=False)
    assert Criterion.parse("ece:higher") == Criterion("ece", higher_is_better=True)
    assert Criterion.parse("recall@10:lower") == Criterion("recall@10", higher_is_better=False)
    for bad in ("recall@10:up", ":lower"):
        with pytest.raises(ConfigError, match=r"direction|names no metric"):
            Criterion.parse(bad)

    perfect = load_bundle(perfect_retrieval_bundle(small_data, tmp_path / "perfect"))
    random = load_bundle(random_retrieval_bundle(small_data, tmp_path / "random"))
    report = compare(random, perfect, small_data, build_replay_log(small_data, seed=0), FAST)
    assert decide(report, (Criterion.parse("recall@10"),)).promote
    # the same large improvement, read as lower-is-better, is a regression
    assert not decide(report, (Criterion.parse("recall@10:lower"),)).promote
    assert not decide(report, (Criterion.parse("recall@10"), Criterion.parse("ndcg@10:lower"))).promote


def test_a_bundle_directory_challenger(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "promote-test")
    champion = _register(random_retrieval_bundle(small_data, tmp_path / "random"), alias="champion")
    perfect = perfect_retrieval_bundle(small_data, tmp_path / "perfect")

    dry = promote_if_better(NAME, str(perfect), SMALL, config=FAST, dry_run=True)
    assert dry.promote and not dry.applied and dry.challenger_version is None
    assert latest_version(NAME) == champion  # a dry run registers nothing
    run = MlflowClient().get_run(dry.report_run_id)
    assert run.data.tags["promotion.verdict"] == "promote (dry run)"
    assert run.data.params["promotion.criteria"] == "recall@20:higher,ndcg@20:higher"

    decision = promote_if_better(NAME, str(perfect), SMALL, config=FAST)
    assert decision.applied and decision.challenger_version == champion + 1
    assert resolve(NAME, "champion").version == champion + 1
    with pytest.raises(DataError, match="not a model bundle"):
        promote_if_better(NAME, str(tmp_path), SMALL, config=FAST)

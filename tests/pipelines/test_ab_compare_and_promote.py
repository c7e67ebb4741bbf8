"""A/B comparison and promotion against the real MLflow registry (SQLite) on small synthetic data."""

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_retrieval_bundle
from rankforge.bundles.registry import log_and_register, resolve
from rankforge.cli import main
from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.models.inputs import padded_to_kjt, side_inputs, sparse_features
from rankforge.models.two_tower import TwoTower
from rankforge.pipelines.ab_compare import ABConfig, compare
from rankforge.pipelines.bundle_scoring import score_retrieval
from rankforge.pipelines.promote import Criterion, decide, promote_if_better
from rankforge.pipelines.replay_log import build_replay_log
from rankforge.pipelines.train import run_training
from rankforge.settings import Settings, configure_mlflow
from rankforge.training.config import load_config

from .conftest import EVAL_DATA, random_ranker_bundle, random_retrieval_bundle

REPO = Path(__file__).resolve().parents[2]
FAST = ABConfig(n_resamples=200)


@pytest.fixture(scope="module")
def trained_retrieval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained two-tower bundle: clearly better than a random one on this data."""
    home = tmp_path_factory.mktemp("train-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKFORGE_HOME", str(home))
        config = load_config(REPO / "configs/retrieval.toml")
        config = config.model_copy(
            update={
                "data": EVAL_DATA,
                "output_dir": home / "job",
                "mlflow": config.mlflow.model_copy(update={"registered_model": "scratch"}),
            }
        )
        return run_training(config).bundle_dir


def test_bundle_scores_match_the_torch_model(eval_data: PreparedData, tmp_path: Path) -> None:
    torch.manual_seed(1)
    d = eval_data
    model = TwoTower(sparse_features(d.inputs, "user"), sparse_features(d.inputs, "item")).eval()
    build_retrieval_bundle(model, d, str(tmp_path))
    scored = score_retrieval(load_bundle(tmp_path), d)
    users = d.mapping.users.filter(d.mapping.users["user_id"].is_in(scored.users.tolist())).sort("user_id")
    rows = d.user_features.filter(d.user_features["user_idx"].is_in(users["user_idx"].to_list()))
    with torch.no_grad():
        u = model.user_embedding(padded_to_kjt(side_inputs(rows, d.inputs, "user"), model.user_keys))
        i = model.item_embedding(
            padded_to_kjt(side_inputs(d.item_features, d.inputs, "item"), model.item_keys)
        )
    all_rows = torch.arange(len(scored.users))
    torch.testing.assert_close(scored.scores(all_rows).float(), u @ i.T, atol=1e-5, rtol=1e-5)
    assert scored.cold_users == 0 and scored.dropped_items == 0
    assert scored.relevant.multiply(scored.exclude).nnz == 0


def test_unknown_users_and_items_are_counted(eval_data: PreparedData, tmp_path: Path) -> None:
    other = prepare(DataConfig(synthetic=SyntheticConfig(n_users=50, n_items=60, seed=9)))
    scored = score_retrieval(load_bundle(random_retrieval_bundle(other, tmp_path)), eval_data)
    assert scored.cold_users > 0 and scored.dropped_items > 0
    assert scored.scores(torch.arange(2)).shape == (2, 60)
    assert scored.relevant.shape[1] == 60


def test_trained_challenger_beats_random_champion_and_ties_do_not(
    eval_data: PreparedData, trained_retrieval: Path, tmp_path: Path
) -> None:
    log = build_replay_log(eval_data, seed=0)
    random = load_bundle(random_retrieval_bundle(eval_data, tmp_path / "random"))
    trained = load_bundle(trained_retrieval)
    better = compare(random, trained, eval_data, log, FAST)
    criteria = (Criterion("recall@20"), Criterion("ndcg@20"))
    assert decide(better, criteria).promote
    for name, interval in better.deltas.items():
        assert interval.low <= interval.estimate <= interval.high, name
        assert interval.estimate == pytest.approx(
            better.challenger.metrics[name] - better.champion.metrics[name]
        )
    assert better.deltas["recall@20"].low > 0
    same = compare(trained, trained, eval_data, log, FAST)
    assert all(i.estimate == 0 and i.low == 0 and i.high == 0 for i in same.deltas.values())
    assert not decide(same, criteria).promote
    worse = compare(trained, random, eval_data, log, FAST)
    decision = decide(worse, criteria)
    assert not decision.promote and "does not improve" in decision.reasons[0]
    with pytest.raises(ConfigError, match="not a metric"):
        decide(worse, (Criterion("auc"),))


def test_ranker_comparison_uses_ctr_metrics(eval_data: PreparedData, tmp_path: Path) -> None:
    log = build_replay_log(eval_data, seed=0)
    a = load_bundle(random_ranker_bundle(eval_data, tmp_path / "a", seed=0))
    b = load_bundle(random_ranker_bundle(eval_data, tmp_path / "b", seed=1))
    report = compare(a, b, eval_data, log, FAST)
    assert {"auc", "logloss", "ece", "replay_ips", "replay_dr"} <= set(report.deltas)
    assert report.champion.metrics["auc"] != report.challenger.metrics["auc"]
    lower = Criterion.parse("logloss")
    assert not lower.higher_is_better
    with pytest.raises(DataError, match="cannot compare a ranker bundle with a retrieval"):
        compare(a, load_bundle(random_retrieval_bundle(eval_data, tmp_path / "r")), eval_data, log, FAST)


def test_promotion_moves_aliases_and_logs_the_decision(
    rankforge_home: Path, eval_data: PreparedData, trained_retrieval: Path, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "promotion-test")
    with mlflow.start_run():
        log_and_register(random_retrieval_bundle(eval_data, tmp_path / "random"), "rf-ab", alias="champion")
    with mlflow.start_run():
        log_and_register(trained_retrieval, "rf-ab")

    dry = promote_if_better("rf-ab", "latest", EVAL_DATA, config=FAST, dry_run=True)
    assert dry.promote and not dry.applied and resolve("rf-ab", "champion").version == 1

    decision = promote_if_better("rf-ab", "latest", EVAL_DATA, config=FAST)
    assert decision.promote and decision.applied
    assert (decision.champion_version, decision.challenger_version) == (1, 2)
    assert resolve("rf-ab", "champion").version == 2
    assert resolve("rf-ab", "previous-champion").version == 1  # the old champion stays reachable
    client = MlflowClient()
    run = client.get_run(decision.report_run_id)
    assert run.data.tags["promotion.verdict"] == "promote"
    assert "recall@20" in run.data.tags["promotion.reasons"]
    assert run.data.metrics["delta_recall_at_20_low"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "promotion.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/recall_at_k.png", "plots/ndcg_at_k.png"}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["role"] for c in children) == ["challenger", "champion"]
    assert client.get_model_version("rf-ab", "2").tags["promotion"] == "promote"

    # the old, worse version challenging the new champion is refused; nothing moves
    back = promote_if_better("rf-ab", 1, EVAL_DATA, config=FAST)
    assert not back.promote and not back.applied
    assert resolve("rf-ab", "champion").version == 2
    assert promote_if_better("rf-ab", 2, EVAL_DATA, config=FAST).reasons == [
        "version 2 already is the champion"
    ]


def test_first_version_without_champion_is_promoted(
    rankforge_home: Path, eval_data: PreparedData, tmp_path: Path
) -> None:
    configure_mlflow(Settings.from_env(), "promotion-test")
    with mlflow.start_run():
        log_and_register(random_retrieval_bundle(eval_data, tmp_path / "b"), "rf-new")
    decision = promote_if_better("rf-new", "latest", EVAL_DATA, config=FAST)
    assert decision.promote and "no champion yet" in decision.reasons[0]
    assert resolve("rf-new", "champion").version == 1


def test_cli_evaluate_and_promote(
    rankforge_home: Path, eval_data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_file = tmp_path / "data.toml"
    data_file.write_text("[data.synthetic]\nn_users = 120\nn_items = 150\nseed = 3\n")
    configure_mlflow(Settings.from_env(), "rankforge-evaluation")
    with mlflow.start_run():
        log_and_register(
            random_retrieval_bundle(eval_data, tmp_path / "a", seed=0), "rf-cli", alias="champion"
        )
    with mlflow.start_run():
        log_and_register(random_retrieval_bundle(eval_data, tmp_path / "b", seed=1), "rf-cli")
    common = ["--data-config", str(data_file), "--resamples", "50"]
    assert main(["evaluate", "models:/rf-cli@champion", *common]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "replay_ips" in out
    assert main(["promote", "rf-cli", "--dry-run", "--json", *common]) == 0
    out = capsys.readouterr().out
    assert "(dry run)" in out and '"applied": false' in out
    assert resolve("rf-cli", "champion").version == 1
    assert main(["promote", "no-such-model", *common]) == 2
    assert "no-such-model" in capsys.readouterr().err

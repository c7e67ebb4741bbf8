"""``rankforge evaluate`` / ``rankforge promote``: data flags, MLflow logging, directed criteria."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from rankforge.bundles.registry import log_and_register, resolve
from rankforge.cli import main
from rankforge.errors import ConfigError
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.ab_compare import ITEM_RATE
from rankforge.pipelines.evaluate_config import data_config
from rankforge.settings import Settings, configure_mlflow

from .conftest import random_ranker_bundle
from .crafted_bundles import perfect_retrieval_bundle, random_retrieval_bundle

GENRES = 'features=[{name="item_genres", side="item", kind="multi_categorical", column="genres"}]'
SMALL = [
    *("--data", "synthetic.n_users=60", "--data", "synthetic.n_items=90", "--data", "synthetic.seed=3"),
    *("--data", GENRES),  # what small_data declares: a declared feature is given like any field
]


def test_data_flags_override_a_file_and_are_validated(tmp_path: Path) -> None:
    file = tmp_path / "data.toml"
    file.write_text('[data]\nhistory_len = 7\nsplit = "random"\n[data.synthetic]\nn_users = 80\n')
    config = data_config(file, ["synthetic.seed=4", "test_fraction=0.3", "split=time"])
    assert (config.history_len, config.split, config.test_fraction) == (7, "time", 0.3)
    assert (config.synthetic.n_users, config.synthetic.seed) == (80, 4)
    assert data_config(None, ["source=file", f"path={tmp_path}/log.parquet"]).path == tmp_path / "log.parquet"
    for flag, message in [
        ("source=file", "data.path is required"),
        ("nope=1", r"unknown key 'nope'; valid keys: \['features', 'history_len'"),
        (
            "split=weird",
            r"split: Input should be 'leave_last_out', 'time', 'random' or 'provided' \(got 'weird'\)",
        ),
        ("history_len=0", "history_len"),
        ("split.x=1", "not a section"),
        ("history_len", "KEY=VALUE"),
    ]:
        with pytest.raises(ConfigError, match=message):
            data_config(None, [flag])


def test_evaluate_logs_the_known_metrics_of_a_perfect_bundle(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = perfect_retrieval_bundle(small_data, tmp_path / "perfect")
    args = ["evaluate", str(bundle), *SMALL, "--resamples", "20", "--experiment", "cli-eval"]
    assert main(args) == 0
    *lines, matched, coverage, last = capsys.readouterr().out.splitlines()
    printed = dict(line.split() for line in lines)
    assert matched.startswith("replay_matched") and "logged events" in matched
    assert coverage.startswith("coverage: ") and "held-out users scored" in coverage
    assert printed["recall@10"] == printed["ndcg@20"] == printed["replay_snips"] == "1.0000"
    assert last.startswith("run ") and "browse it: mlflow ui --backend-store-uri sqlite:" in last
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("cli-eval").experiment_id])
    assert run.data.metrics["recall_at_10"] == 1.0 and run.data.metrics["mrr_at_20"] == 1.0
    assert run.data.params["reward_model"] == ITEM_RATE and run.data.tags["model"] == str(bundle)

    assert main(["evaluate", str(bundle), *SMALL, "--reward-model", str(tmp_path / "none")]) == 2
    assert "not a model bundle" in capsys.readouterr().err


def test_bad_data_flags_fail_before_touching_mlflow(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path), "--data", "source=file"]) == 2
    assert "data.path is required" in capsys.readouterr().err
    assert not (rankforge_home / "mlflow.db").exists()


def test_promote_with_directed_criteria_and_dry_run(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_mlflow(Settings.from_env(), "rankforge-evaluation")
    with mlflow.start_run():
        log_and_register(random_retrieval_bundle(small_data, tmp_path / "r"), "rf-cli", alias="champion")
    with mlflow.start_run():
        log_and_register(perfect_retrieval_bundle(small_data, tmp_path / "p"), "rf-cli")
    common = [*SMALL, "--resamples", "50"]

    assert main(["promote", "rf-cli", "--metric", "recall@10:lower", "--json", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("KEEP CHAMPION") and "recall@10 (lower is better)" in out
    scored = small_data.test_positives()["user_idx"].n_unique()  # users with a held-out positive
    users = small_data.test_events["user_idx"].n_unique()
    assert f"(both scored on the same {scored} of {users} held-out users)" in out
    assert '"promote": false' in out
    assert main(["promote", "rf-cli", "--metric", "recall@10", "--metric", "logloss", *common]) == 2
    assert "'logloss' is not a metric of this comparison" in capsys.readouterr().err
    dry_run = ["promote", "rf-cli", "--challenger", "2", "--metric", "recall@10", "--dry-run"]
    assert main([*dry_run, *common]) == 0
    assert capsys.readouterr().out.startswith("PROMOTE (dry run)")
    assert resolve("rf-cli", "champion").version == 1
    assert main([*dry_run, *common]) == 0
    assert "browse it: mlflow ui" in capsys.readouterr().out.splitlines()[-1]


def test_evaluate_a_ranker_bundle(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = random_ranker_bundle(small_data, tmp_path / "ranker")
    args = ["evaluate", str(bundle), *SMALL, "--resamples", "20", "--policy-temperature", "0.5"]
    assert main([*args, "--experiment", "cli-rank"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[:-3])
    # leave-one-out holds out one event per user: no user has both labels, so no GAUC
    assert {"auc", "logloss", "ece", "replay_dr"} <= set(printed) and "gauc" not in printed
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("cli-rank").experiment_id])
    assert run.data.params["kind"] == "ranker" and run.data.params["reward_model"] == "itself"
    assert run.data.params["policy_temperature"] == "0.5"
    summary = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation.json")
    assert summary["evaluated_events"] == small_data.test_events.height
    assert summary["dropped_item_events"] == 0
    assert summary["metrics"]["auc"] == pytest.approx(float(printed["auc"]), abs=1e-4)
    # held-out events with both labels per user: GAUC is reported too
    random_split = [
        *args,
        "--data",
        "split=random",
        "--data",
        "test_fraction=0.5",
        "--experiment",
        "cli-rank2",
    ]
    assert main(random_split) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == "gauc" and 0.0 <= float(line.split()[1]) <= 1.0 for line in lines[:-3])
    # data that does not declare the bundle's features is refused in one line, naming the feature
    assert main(["evaluate", str(bundle), *SMALL[:-2], "--experiment", "cli-rank3"]) == 2
    assert "reads declared feature 'item_genres', which the evaluation data does not declare" in (
        capsys.readouterr().err
    )


def test_promote_refuses_models_trained_on_different_data(
    rankforge_home: Path, small_data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rankforge.features.pipeline import DataConfig, SyntheticConfig, prepare

    other = prepare(DataConfig(synthetic=SyntheticConfig(n_users=50, n_items=70, seed=9)))
    configure_mlflow(Settings.from_env(), "rankforge-evaluation")
    with mlflow.start_run():
        log_and_register(random_retrieval_bundle(small_data, tmp_path / "a"), "rf-data", alias="champion")
    with mlflow.start_run():
        log_and_register(perfect_retrieval_bundle(other, tmp_path / "b"), "rf-data")
    capsys.readouterr()  # MLflow's own registration lines
    assert main(["promote", "rf-data", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rankforge promote: error: rf-data v1 vs models:/rf-data/2")
    assert "different data sets" in err[0] and "--allow-different-data" in err[0]
    assert resolve("rf-data", "champion").version == 1
    forced = ["promote", "rf-data", *SMALL, "--allow-different-data", "--resamples", "20", "--dry-run"]
    assert main(forced) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("champion v1 vs challenger v2")


def test_help_describes_the_platform_and_evaluate(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in (([], "Recommender ranking platform"), (["evaluate"], "Score one served bundle")):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert expected in text and "``" not in text  # plain text, not raw RST

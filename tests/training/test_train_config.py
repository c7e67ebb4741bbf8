"""Training configs: both formats, every shipped example, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankforge.errors import ConfigError
from rankforge.training.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"kind": "retrieval"}, "objective": {"name": "sampled_softmax"}}


@pytest.mark.parametrize("name", ["retrieval.toml", "ranking.toml", "retrieval_movielens.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert config.source_path == (REPO / "configs" / name).resolve()
    assert config.registered_model in ("rankforge-retrieval", "rankforge-ranker")


def test_toml_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[model]\nkind = "ranking"\n[objective]\nname = "bce"\n[training]\nepochs = 4\n'
    )
    (tmp_path / "a.yaml").write_text(
        "model: {kind: ranking}\nobjective: {name: bce}\ntraining: {epochs: 4}\n"
    )
    toml, yaml = load_config(tmp_path / "a.toml"), load_config(tmp_path / "a.yaml")
    assert toml.model_dump() == yaml.model_dump()
    assert toml.registered_model == "rankforge-ranker" and toml.training.epochs == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training": {"epoch": 3}}, "unknown key 'training.epoch'"),
        ({"data": {"sorce": "synthetic"}}, "unknown key 'data.sorce'"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"negatives": {"distribution": "zipf"}}, "negatives.distribution"),
        ({"sharding": {"sharding_types": ["diagonal"]}}, "sharding.sharding_types.0"),
        ({"model": {"kind": "ranking", "over_sizes": [8, 2]}}, "over_sizes must end with 1"),
        ({"objective": {"name": "nope"}}, "unknown objective 'nope'"),
        ({"objective": {"name": "bce"}}, "takes 'ctr' inputs but this model trains on 'retrieval'"),
        ({"objective": {"name": "ccl", "params": {"margn": 0.5}}}, "unknown hyper-parameter"),
        ({"objective": {"name": "sampled_softmax", "params": {"temperature": -1}}}, "temperature"),
    ],
)
def test_bad_values_name_their_key(change: dict, message: str) -> None:
    raw = {**MINIMAL, **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_registered_objectives_are_accepted() -> None:
    config = parse_config({**MINIMAL, "objective": {"name": "psl", "params": {}}})
    assert config.objective.name == "psl"
    ranking = parse_config(
        {"model": {"kind": "ranking"}, "objective": {"name": "confidence_ranking", "reference": "item_rate"}}
    )
    assert ranking.objective.name == "confidence_ranking"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "broken.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")


def test_selection_metric_must_be_one_the_model_kind_validates() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "model": {"kind": "ranking"},
                "objective": {"name": "bce"},
                "training": {"selection_metric": "recall@20"},
            }
        )
    message = str(info.value)
    assert "'recall@20' is not a ranking validation metric" in message and "'auc'" in message
    assert "{'model'" not in message  # one line naming the problem, not the whole config echoed
    ranker = parse_config({"model": {"kind": "ranking"}, "objective": {"name": "bce"}})
    assert ranker.selection == ("auc", True)
    lower = parse_config(
        {
            "model": {"kind": "ranking"},
            "objective": {"name": "bce"},
            "training": {"selection_metric": "logloss"},
        }
    )
    assert lower.selection == ("logloss", False)
    mf = parse_config({"model": {"kind": "mf"}, "objective": {"name": "ccl"}})
    assert mf.selection == ("recall@20", True)


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rankforge.features.pipeline import DataConfig

    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "job.toml").write_text(
        'output_dir = "../runs/job"\n[data]\nsource = "movielens"\npath = "../data/ml"\n'
        '[model]\nkind = "mf"\n[objective]\nname = "bpr"\n'
    )
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    config = load_config("project/configs/job.toml")
    assert config.data.path == Path("project/data/ml")
    assert config.output_dir == Path("project/runs/job")
    (folder / "data.yaml").write_text(
        "data:\n  source: movielens\n  path: /abs/ml\n  items_path: movies.csv\n"
    )
    data = DataConfig.from_file(folder / "data.yaml")
    assert data.path == Path("/abs/ml") and data.items_path == folder / "movies.csv"


@pytest.mark.slow
def test_train_from_another_directory_writes_beside_the_config(
    rankforge_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rankforge.cli import main

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "job.toml").write_text(
        'output_dir = "out"\n[data.synthetic]\nn_users = 30\nn_items = 40\n[model]\nkind = "popularity"\n'
        '[mlflow]\nexperiment = "paths-test"\nregister_model = false\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "../project/job.toml"]) == 0
    assert capsys.readouterr().out.startswith("run ")
    assert (folder / "out" / "bundle" / "manifest.json").is_file()
    assert not (elsewhere / "out").exists()


def test_runs_go_to_one_experiment_per_model_kind_and_source() -> None:
    assert parse_config({"model": {"kind": "mf"}, "objective": {"name": "ccl"}}).experiment == "rankforge-mf"
    gowalla = load_config(REPO / "configs/gowalla/mf_ccl.toml")
    assert gowalla.experiment == "rankforge-gowalla"  # configured
    raw = {"model": {"kind": "mf"}, "objective": {"name": "ccl"}, "data": {"source": "lightgcn", "path": "x"}}
    assert parse_config(raw).experiment == "rankforge-mf-lightgcn"
    assert load_config(REPO / "configs/ranking.toml").experiment == "rankforge-ranking"

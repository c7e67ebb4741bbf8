"""Your own log: column mapping, label rules, timestamp formats, and errors naming the bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from rankforge.errors import ConfigError, DataError
from rankforge.features.log_spec import LogSpec, read_log
from rankforge.features.pipeline import DataConfig, prepare

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "clicks.csv"
CLICKS = LogSpec(user="uid", item="video", timestamp="ts", label="clicked", label_rule="binary")


def test_the_example_click_log_maps_onto_the_canonical_schema() -> None:
    log = read_log(EXAMPLE, CLICKS)
    assert log.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert log.height == 20 and log["rating"].sum() == 14
    assert log["timestamp"][0] == 1767254400  # 2026-01-01T08:00:00Z in epoch seconds


def test_a_click_column_decides_the_label_instead_of_being_ignored() -> None:
    config = DataConfig(source="file", path=EXAMPLE, log=CLICKS, split="random", test_fraction=0.25)
    data = prepare(config)
    events = pl.concat([data.train_events, data.test_events])
    assert events.height == 20 and events["label"].sum() == 14  # non-clicks are negatives now
    assert config.label_threshold == 0.5


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_parquet_and_ndjson_read_the_same(tmp_path: Path, fmt: str) -> None:
    frame = pl.read_csv(EXAMPLE)
    path = tmp_path / f"log.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_ndjson(path)
    assert read_log(path, CLICKS).equals(read_log(EXAMPLE, CLICKS))


def test_timestamps_in_seconds_milliseconds_or_iso_agree(tmp_path: Path) -> None:
    seconds = pl.DataFrame({"u": [1, 2], "i": [3, 4], "t": [1_700_000_000, 1_700_000_600]})
    path = tmp_path / "s.csv"
    seconds.write_csv(path)
    spec = LogSpec(user="u", item="i", timestamp="t")
    want = read_log(path, spec)["timestamp"]
    seconds.with_columns(pl.col("t") * 1000).write_csv(path)
    assert read_log(path, spec)["timestamp"].equals(want)
    iso = seconds.with_columns(pl.from_epoch("t", "s").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("t"))
    iso.write_csv(path)
    assert read_log(path, spec)["timestamp"].equals(want)
    assert read_log(path, spec)["rating"].is_null().all()  # implicit: every event a positive


def test_threshold_rule_for_watch_time(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    pl.DataFrame({"u": [1, 1, 2], "i": [1, 2, 1], "t": [1, 2, 3], "watch_s": [3.0, 45.0, 30.0]}).write_csv(
        path
    )
    spec = LogSpec(
        user="u", item="i", timestamp="t", label="watch_s", label_rule="threshold", label_threshold=30
    )
    config = DataConfig(source="file", path=path, log=spec)
    assert config.label_threshold == 30 and read_log(path, spec)["rating"].to_list() == [3.0, 45.0, 30.0]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("uid", ["1", None, "3"], r"column 'uid' has 1 null id\(s\): \{'line': 3, 'uid': None\}"),
        ("uid", ["1", "u_2", "3"], r"column 'uid' holds non-integer ids .*'uid': 'u_2'"),
        ("clicked", ["1", "yes", "0"], r"label column 'clicked' has missing or non-numeric values: .*'yes'"),
        ("clicked", ["1", "-1", "0"], r"label column 'clicked' has negative values: .*'line': 3"),
        ("clicked", ["1", "2", "0"], r"label_rule 'binary'\) holds values other than 0/1: .*'line': 3"),
        (
            "ts",
            ["2026-01-01", "yesterday", "2026-01-03"],
            r"column 'ts' has unparsable timestamps: .*'yesterday'",
        ),
    ],
)
def test_bad_data_names_the_column_and_rows(
    tmp_path: Path, column: str, values: list[str], message: str
) -> None:
    rows = {
        "uid": ["1", "2", "3"],
        "video": ["10", "11", "12"],
        "ts": ["2026-01-01"] * 3,
        "clicked": ["1", "0", "1"],
    }
    rows[column] = values
    path = tmp_path / "bad.csv"
    pl.DataFrame(rows).write_csv(path)
    with pytest.raises(DataError, match=message):
        read_log(path, CLICKS)


def test_spec_errors_are_one_line(tmp_path: Path) -> None:
    misnamed = LogSpec(user="uid", item="video", timestamp="ts", label="clicks", label_rule="binary")
    with pytest.raises(DataError, match=r"data\.log names column\(s\) the file lacks: label='clicks'"):
        read_log(EXAMPLE, misnamed)
    for raw, message in [
        ({"label": "clicked"}, "give label_rule = 'binary' or 'threshold'"),
        ({"label_rule": "binary"}, "needs data.log.label"),
        ({"label": "w", "label_rule": "threshold"}, "label_threshold goes with"),
    ]:
        with pytest.raises(ValueError, match=message):
            LogSpec(**raw)
    with pytest.raises(ConfigError, match=r"data\.log describes a log file"):
        path = tmp_path / "data.json"
        path.write_text(json.dumps({"data": {"source": "synthetic", "log": {"user": "u"}}}))
        DataConfig.from_file(path)


def test_the_example_config_trains_on_the_example_log(rankforge_home: Path, capsys) -> None:
    from rankforge.bundles.bundle import load_bundle
    from rankforge.cli import main

    assert main(["train", str(REPO / "examples" / "clicks.toml")]) == 0
    out = capsys.readouterr().out
    assert "my-ranker" in out
    # the example's declared side-table features are inputs of the trained, exported ranker
    bundle = load_bundle(out.split("; bundle ")[1].splitlines()[0])
    assert {"video_topics", "viewer_country"} <= set(bundle.manifest.inputs["ranker.onnx"])
    assert bundle.manifest.dense_features[-1] == "video_duration"


def test_a_ctr_log_as_it_comes_without_time_and_with_its_own_validation_and_test_files(
    tmp_path: Path,
) -> None:
    """A CTR benchmark's layout (BARS Frappe: label,user,item,... in train/valid/test CSVs, no
    time): declared in TOML with ``timestamp = false`` and ``split = "provided"``."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 400), ("valid", 120), ("test", 100)):
        pl.DataFrame(
            {
                "label": rng.integers(0, 2, n),
                "user": rng.integers(0, 30, n),
                "item": rng.integers(0, 40, n),
                "daytime": rng.integers(0, 7, n),
            }
        ).write_csv(tmp_path / f"{name}.csv")
    (tmp_path / "ctr.toml").write_text(
        """
[data]
source = "file"
path = "train.csv"
split = "provided"
test_path = "test.csv"
validation_path = "valid.csv"
[data.log]
user = "user"
item = "item"
timestamp = false
label = "label"
label_rule = "binary"
"""
    )
    config = DataConfig.from_file(tmp_path / "ctr.toml")
    assert config.log is not None and config.log.timestamp is None
    assert config.test_path == tmp_path / "test.csv"  # relative to the config's folder
    data = prepare(config)
    assert data.train_events.height == 400  # every training row, none carved off
    assert data.validation_events is not None and data.validation_events.height <= 120
    test = pl.read_csv(tmp_path / "test.csv")
    known = data.mapping.items["item_id"].to_list()
    assert data.test_events.height == test.filter(pl.col("item").is_in(known)).height
    assert sorted(data.train_events["label"].unique().to_list()) == [0, 1]
    # provided files belong to a file log's provided split
    with pytest.raises(ValidationError, match=r"needs data\.test_path"):
        DataConfig.model_validate({"source": "file", "path": "x.csv", "split": "provided"})
    with pytest.raises(ValidationError, match="go with source='file', split='provided'"):
        DataConfig.model_validate(
            {"source": "file", "path": "x.csv", "split": "random", "test_path": "t.csv"}
        )

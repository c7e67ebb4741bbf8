"""Out-of-core preparation: the same data as ``prepare``, shard by shard, and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rankforge.cli import main
from rankforge.errors import DataError
from rankforge.features.event_order import event_order
from rankforge.features.feature_spec import Feature, SideTable
from rankforge.features.log_spec import LogSpec
from rankforge.features.out_of_core import MANIFEST, MARKER, _sorted_events, load_prepared, prepare_to_disk
from rankforge.features.pipeline import DataConfig, PreparedData, prepare
from rankforge.features.synthetic import generate_log
from rankforge.models.inputs import pad_lists
from rankforge.training.batches import FeatureTables, NegativeSampler, RankingBatches, RetrievalBatches

KEY = ["user_idx", "timestamp", "item_idx"]
GENRES = Feature(name="item_genres", side="item", kind="multi_categorical", column="genres", max_len=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ooc")
    log = generate_log(120, 150, seed=4)
    log.interactions.write_parquet(folder / "log.parquet")
    log.items.write_parquet(folder / "items.parquet")
    return folder


def _config(world: Path, split: str, log: str = "log.parquet", **extra: object) -> DataConfig:
    return DataConfig(
        source="file",
        path=world / log,
        split=split,
        validation_fraction=0.1,
        item_table=SideTable(path=world / "items.parquet", key="item_id"),
        features=[GENRES],
        **extra,
    )


@pytest.mark.parametrize("split", ["leave_last_out", "time", "random"])
def test_out_of_core_prepares_what_prepare_prepares(world: Path, tmp_path: Path, split: str) -> None:
    config = _config(world, split)
    expected = prepare(config)
    out = prepare_to_disk(config, tmp_path / "prepared", events_per_bucket=1_000)  # several buckets
    got = load_prepared(out)
    assert len(got.example_shards["ranking_examples"]) > 1
    assert got.mapping.users.equals(expected.mapping.users) and got.mapping.items.equals(
        expected.mapping.items
    )
    assert got.user_features.equals(expected.user_features)
    assert got.item_features.equals(expected.item_features.select(got.item_features.columns))
    assert got.inputs == expected.inputs and got.vocabulary_digests() == expected.vocabulary_digests()
    for name in ("train_events", "test_events", "validation_events"):
        cols = ["user_idx", "item_idx", "timestamp", "label", "user_id", "item_id"]
        assert (
            getattr(got, name).select(cols).sort(KEY).equals(getattr(expected, name).select(cols).sort(KEY))
        )
    for name in ("retrieval_examples", "ranking_examples"):
        mine = pl.read_parquet(got.example_shards[name]).sort(KEY)
        theirs = getattr(expected, name).sort(KEY)
        assert mine.select(theirs.drop("history").columns).equals(theirs.drop("history"))
        # the stored n_before gathers exactly the point-in-time history prepare() materialises
        gathered = got.sequences.histories(mine["user_idx"].to_numpy(), mine["n_before"].to_numpy(), 20)
        np.testing.assert_array_equal(gathered, pad_lists(theirs["history"], 20).numpy())


def test_ties_on_time_split_and_number_the_same_whole_and_in_buckets(world: Path, tmp_path: Path) -> None:
    # coarse timestamps make many events of a user share a time; rows shuffled: the out-of-core
    # path sorts each bucket, the whole-log path does not see that order, and both must agree
    log = pl.read_parquet(world / "log.parquet")
    coarse = log.with_columns(pl.col("timestamp") // 500_000).sample(fraction=1.0, shuffle=True, seed=3)
    assert coarse.select(pl.struct("user_id", "timestamp").is_duplicated().sum()).item() > 100
    coarse.write_parquet(world / "coarse.parquet")
    config = _config(world, "leave_last_out", log="coarse.parquet")
    expected = prepare(config)
    got = load_prepared(prepare_to_disk(config, tmp_path / "prepared", events_per_bucket=1_000))
    cols = ["user_idx", "item_idx", "timestamp", "label"]
    assert got.test_events.select(cols).sort(KEY).equals(expected.test_events.select(cols).sort(KEY))
    mine = pl.read_parquet(got.example_shards["ranking_examples"])
    theirs = expected.ranking_examples
    assert mine.drop("n_before").sort(KEY).equals(theirs.drop("history").sort(KEY))
    gathered = got.sequences.histories(mine["user_idx"].to_numpy(), mine["n_before"].to_numpy(), 20)
    order = mine.with_row_index("_row").sort(KEY)["_row"].to_numpy()
    np.testing.assert_array_equal(gathered[order], pad_lists(theirs.sort(KEY)["history"], 20).numpy())


@pytest.mark.parametrize("span", [1_000, 2**40])
def test_bucket_sort_is_the_event_order(span: int) -> None:
    # user, time, then the seeded (user, item) tie key -- the order leave_last_out sorts by
    rng = np.random.default_rng(0)
    n = 5_000
    frame = pl.DataFrame(
        {
            "user_id": rng.integers(0, 50, n),
            "item_id": rng.integers(-span, span, n),
            "rating": rng.random(n),
            "timestamp": rng.integers(0, 20, n) * span,  # many ties on time
        }
    )
    expected = frame.sort(event_order())
    got = _sorted_events(frame.sample(fraction=1.0, shuffle=True, seed=1))
    assert got.select(pl.exclude("rating")).equals(expected.select(pl.exclude("rating")))


def test_prepared_source_trains_in_bounded_batches(world: Path, tmp_path: Path) -> None:
    out = prepare_to_disk(_config(world, "leave_last_out"), tmp_path / "p", events_per_bucket=1_000)
    data = prepare(DataConfig(source="prepared", path=out))
    assert data.example_shards is not None and data.ranking_examples.height == 0
    tables = FeatureTables.build(data)
    sampler = NegativeSampler(tables.item_events, "uniform")
    expected = prepare(_config(world, "leave_last_out")).ranking_examples
    history_of = {
        (u, i, t): h
        for u, i, t, h in expected.select("user_idx", "item_idx", "timestamp", "history").iter_rows()
    }
    batches = RankingBatches(data, tables, sampler, n_negatives=0, batch_size=64)
    rows = 0
    for batch in batches:
        rows += batch.size
        assert batch.size == 64
    n = expected.height
    assert len(batches) == n // 64 and rows == n - n % 64  # every row once per epoch, but the tail
    # one streamed chunk: its rows carry the point-in-time history of the same event
    chunk = batches._load_shard(data.example_shards["ranking_examples"][0])
    frame = pl.read_parquet(data.example_shards["ranking_examples"][0])
    for row, (u, i, t) in enumerate(frame.select("user_idx", "item_idx", "timestamp").iter_rows()):
        history = chunk["history"][row]
        assert history[history >= 0].tolist() == list(history_of[(u, i, t)])
    # two processes read disjoint shards and take the same number of steps
    parts = [
        RetrievalBatches(data, tables, sampler, 4, True, batch_size=32, rank=r, world_size=2) for r in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) > 0
    assert not set(parts[0].shards) & set(parts[1].shards)
    seen = torch.cat([b.user.values() for b in parts[0]])
    assert seen.numel() > 0


def test_bad_rows_are_named_and_nothing_is_left_behind(tmp_path: Path) -> None:
    log = pl.DataFrame(
        {"uid": [1, 2, None, 4], "sku": [5, 6, 7, 8], "ts": ["2026-01-01", "x", "2026-01-02", "2026-01-03"]}
    )
    log.write_csv(tmp_path / "log.csv")
    spec = LogSpec(user="uid", item="sku", timestamp="ts")
    config = DataConfig(source="file", path=tmp_path / "log.csv", log=spec, split="random")
    with pytest.raises(DataError, match=r"column 'uid' has 1 null id\(s\): \{'line': 4, 'uid': None\}"):
        prepare_to_disk(config, tmp_path / "out")
    log.with_columns(pl.col("uid").fill_null(3)).write_csv(tmp_path / "log.csv")
    with pytest.raises(DataError, match=r"column 'ts' has unparsable timestamps: \{'line': 3, 'ts': 'x'\}"):
        prepare_to_disk(config, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]  # no output, no temporary folder


def test_prepare_cli(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "data.toml"
    config.write_text(f'[data]\nsource = "file"\npath = "{world / "log.parquet"}"\nsplit = "random"\n')
    assert main(["prepare", str(config), "--out", str(tmp_path / "prepared")]) == 0
    assert 'source = "prepared"' in capsys.readouterr().out
    data: PreparedData = prepare(DataConfig(source="prepared", path=tmp_path / "prepared"))
    assert data.n_users == 120
    config.write_text('[data]\nsource = "synthetic"\n')
    assert main(["prepare", str(config), "--out", str(tmp_path / "other")]) == 2
    assert "out-of-core preparation reads a log file" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_an_out_folder_holding_the_input_or_foreign_files_is_refused_before_any_work(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the log in a folder with an unrelated file beside it: --out naming that folder deletes nothing
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "log.parquet").write_bytes((world / "log.parquet").read_bytes())
    (folder / "notes.txt").write_text("mine\n")
    config = DataConfig(source="file", path=folder / "log.parquet", split="random")
    with pytest.raises(DataError, match=r"holds the input .*log.parquet: it would be replaced"):
        prepare_to_disk(config, folder)
    with pytest.raises(DataError, match=r"holds the input"):
        prepare_to_disk(config, tmp_path)  # a parent of the input, too
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(
        DataError, match=r"is a folder rankforge prepare did not write \(no \.rankforge-prepared\)"
    ):
        prepare_to_disk(config, mine)
    with pytest.raises(DataError, match=r"is a file, not a folder"):
        prepare_to_disk(config, folder / "notes.txt")
    assert sorted(p.name for p in folder.iterdir()) == ["log.parquet", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "mine\n" and (folder / "notes.txt").read_text() == "mine\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder
    # the CLI: one line, exit 2
    data_toml = tmp_path / "data.toml"
    data_toml.write_text(f'[data]\nsource = "file"\npath = "{folder / "log.parquet"}"\nsplit = "random"\n')
    assert main(["prepare", str(data_toml), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankforge prepare: error: --out") and "\n" not in err
    # an output prepare wrote (it carries the marker) is replaced by the next run; an empty folder too
    out = prepare_to_disk(config, tmp_path / "prepared")
    assert (out / MARKER).is_file()
    assert prepare_to_disk(config, out) == out and (out / MANIFEST).is_file()
    (tmp_path / "empty").mkdir()
    assert (prepare_to_disk(config, tmp_path / "empty") / MARKER).is_file()


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(world: Path, tmp_path: Path) -> None:
    config = DataConfig(source="file", path=world / "log.parquet", split="random")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = tmp_path / f".out.tmp-{gone.stdout.strip()}-deadbeef"  # a driver SIGKILLed mid-run
    (dead / "_raw").mkdir(parents=True)
    (dead / "_raw" / "bucket.ipc").write_bytes(b"x" * 1000)
    running = tmp_path / f".out.tmp-{os.getpid()}-0000live"  # a run still going (this process)
    running.mkdir()
    prepare_to_disk(config, tmp_path / "out")
    assert not dead.exists() and running.is_dir()

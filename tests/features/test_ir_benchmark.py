"""The IR-Benchmark layout (the PSL paper's splits): a small file through the loader, and the real
Amazon-Electronic split through the pipeline on its published counts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.loaders import load_interactions
from rankforge.features.pipeline import DataConfig, prepare


def _write(folder: Path, name: str, rows: list[tuple[int, int]]) -> None:
    lines = ["user_procid\titem_procid", *(f"{u}\t{i}" for u, i in rows)]
    (folder / name).write_text("\n".join(lines) + "\n")


def test_pairs_with_a_header_become_the_canonical_log(tmp_path: Path) -> None:
    _write(tmp_path, "train.tsv", [(0, 5), (0, 2), (1, 5), (0, 7)])
    log = load_interactions(tmp_path / "train.tsv")  # layout from the name
    assert log.select("user_id", "item_id").rows() == [(0, 5), (0, 2), (1, 5), (0, 7)]
    # a user's lines keep their order as time
    assert log.filter(pl.col("user_id") == 0)["timestamp"].to_list() == [0, 1, 2]


def test_a_file_without_the_header_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("0\t5\n1\t6\n")
    with pytest.raises(DataError, match="user_procid"):
        load_interactions(tmp_path / "train.tsv")


def test_provided_split_keeps_train_and_test(tmp_path: Path) -> None:
    _write(tmp_path, "train.tsv", [(u, i) for u in range(4) for i in range(6) if i != u])
    _write(tmp_path, "test.tsv", [(u, u) for u in range(4)])
    data = prepare(DataConfig(source="ir_benchmark", path=tmp_path, split="provided"))
    assert data.train_events.height == 20 and data.test_events.height == 4


@pytest.mark.psl
def test_amazon_electronic_split_counts(psl_electronic_dir: Path) -> None:
    data = prepare(
        DataConfig(source="ir_benchmark", path=psl_electronic_dir, split="provided", validation_fraction=0.1)
    )
    assert (data.n_users, data.n_items) == (13_455, 8_360)  # the paper's Table B.1 / summary.txt
    assert data.known_events().height == 182_398
    assert data.test_events.height == 52_123
    assert data.validation_events is not None
    assert 0.09 < data.validation_events.height / 182_398 < 0.11

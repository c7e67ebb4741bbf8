"""The quality benchmark runner on a tiny synthetic config (the Gowalla run itself is a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankforge.cli import main
from rankforge.pipelines.quality_benchmark import PAPER, run_benchmark, table

TINY = """
output_dir = "{out}"
[data]
validation_fraction = 0.2
[data.synthetic]
n_users = 40
n_items = 60
[model]
kind = "mf"
embedding_dim = 8
[objective]
name = "bpr"
[optimizer]
sparse = "adam"
sparse_lr = 0.01
[training]
epochs = 2
batch_size = 64
[negatives]
count = 4
[mlflow]
experiment = "quality-benchmark-test"
register_model = false
"""


@pytest.mark.slow
def test_benchmark_trains_each_config_and_prints_the_table(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "mf_bpr.toml").write_text(TINY.format(out=tmp_path / "job"))
    rows = run_benchmark(configs, ["mf_bpr"], budget_minutes=5.0, threads=1, output=tmp_path / "rows.json")
    (row,) = rows
    assert row.name == "mf_bpr" and row.model == "mf" and row.objective == "bpr"
    assert 0.0 <= row.recall_at_20 <= 1.0 and 0.0 <= row.ndcg_at_20 <= 1.0
    assert 1 <= row.best_epoch <= row.epochs_run <= 2
    assert row.peak_rss_gb > 0 and row.wall_minutes > 0
    assert (row.paper_recall_at_20, row.paper_ndcg_at_20) == PAPER["mf_bpr"][:2]
    printed = capsys.readouterr().out
    assert f"| {row.recall_at_20:.4f} | 0.1290 |" in printed
    assert json.loads((tmp_path / "rows.json").read_text())[0]["name"] == "mf_bpr"
    assert table(rows, 1, 5.0).count("\n") == 4


def test_cli_names_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark-quality", "--configs", str(tmp_path), "--models", "nope"]) == 2
    assert "no benchmark config" in capsys.readouterr().err

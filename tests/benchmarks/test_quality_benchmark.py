"""The quality benchmark runner on a tiny synthetic config (the Gowalla run itself is a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankforge.benchmarks.quality import DATASETS, Dataset, Entry, Published, run_benchmark
from rankforge.cli import main
from rankforge.training.config import load_config

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
{objective}
[optimizer]
sparse = "adam"
sparse_lr = 0.01
[training]
epochs = 2
batch_size = 64
[negatives]
count = 4
exclude = "user_positives"
[mlflow]
experiment = "quality-benchmark-test"
register_model = false
"""
SL = 'name = "psl"\nparams = { activation = "exp", temperature = 0.1, include_positive = false }'
RELU = 'name = "psl"\nparams = { activation = "relu", temperature = 0.1, score_temperature = 2.0 }'


PAPER = Published(0.5, 0.4, "made up")


@pytest.mark.slow
def test_benchmark_searches_on_validation_repeats_seeds_and_pairs_psl_with_sl(
    rankforge_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "mf_sl.toml").write_text(TINY.format(out=tmp_path / "sl", objective=SL))
    (configs / "mf_psl_relu.toml").write_text(TINY.format(out=tmp_path / "relu", objective=RELU))
    dataset = Dataset(
        "tiny",
        "configs",
        "tiny synthetic",
        (Entry("mf_sl", PAPER, "temperature", (0.1, 0.5)), Entry("mf_psl_relu", PAPER)),
    )
    rows = run_benchmark(
        dataset,
        ["mf_sl", "mf_psl_relu"],
        threads=1,
        output=tmp_path / "rows.json",
        parallel=2,
        search_epochs=1,
        seeds=2,
        root=tmp_path,
    )
    sl, _ = rows
    # the grid value with the best *validation* score was kept, and its full run is the row
    assert set(sl.searched) == {"0.1", "0.5"}
    best = max(sl.searched, key=sl.searched.__getitem__)
    assert sl.objective == f"psl(exp) t={best}"
    assert sl.epochs_run == 2  # the full config, not the 1-epoch search run
    for row in rows:
        assert 0.0 <= row.recall_at_20 <= 1.0 and 0.0 <= row.ndcg_at_20 <= 1.0
        assert 1 <= row.best_epoch <= row.epochs_run
        assert row.examples_per_second > 0 and row.epochs_per_second > 0 and row.peak_rss_gb > 0
        assert (row.paper_recall_at_20, row.paper_ndcg_at_20) == (0.5, 0.4)
        assert row.seeds == 2 and row.other_seeds[0][0] == row.seed + 1
        reached = row.recall_at_20 >= 0.5 and row.ndcg_at_20 >= 0.4
        assert (row.minutes_to_paper is not None) == reached
    printed = capsys.readouterr().out
    assert f"| {sl.mean('recall_at_20'):.4f} | 0.5000 |" in printed
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["mf_sl", "mf_psl_relu"]
    (delta,) = saved["deltas"]
    assert delta.startswith("mf_psl_relu - mf_sl: recall@20 ") and "2 seed(s)" in delta


def test_cli_names_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark-quality", "--dataset", "psl-electronic", "--models", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_every_declared_model_has_its_config() -> None:
    repo = Path(__file__).resolve().parents[2]
    for dataset in DATASETS.values():
        for entry in dataset.entries:
            config = load_config(repo / dataset.folder / f"{entry.name}.toml")
            if entry.search_param is not None:
                assert config.objective is not None and entry.search_param in config.objective.params

"""Does Confidence Ranking retrain a serving CTR model better? The experiment of Zhu et al.
("Confidence Ranking for CTR Prediction", 2023) on a real log, as a benchmark.

The log is cut by time into three periods (by default the first 60% of events, the next 20%, the
last 20%). The *previous* model is trained on period 1, as if it were serving when period 2
happened. The *new* model is trained on periods 1-2 three ways:

    bce          from scratch, plain log-loss
    bce_warm     log-loss, warm-started from the previous model's weights (rows matched by raw id)
    confidence   Confidence Ranking against the previous model's logits (objective.reference)

and all are tested on period 3. Every job is an ordinary training job (model selection on the
last 10% of its training time, never on period 3). Per seed, the test events are scored through
each model's exported bundle; the table gives AUC, GAUC and LogLoss (mean and spread over seeds)
and paired bootstrap intervals of the differences, resampling *users* (their events stay
together) with the same resample applied to every seed's predictions.

    .venv/bin/python benchmarks/confidence_ranking_movielens.py [--seeds 0 1 2] [--epochs 8]

Prints the tables recorded in ``benchmarks/README.md``. Run it alone: one torch thread per job,
jobs one after another.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from rankforge.benchmarks.machine import machine
from rankforge.bundles.bundle import load_bundle
from rankforge.errors import DataError
from rankforge.evaluation.metrics import auc, gauc, logloss
from rankforge.features.loaders import load_interactions
from rankforge.features.pipeline import PreparedData, prepare
from rankforge.features.schema import TIMESTAMP
from rankforge.pipelines.bundle_scoring import ranker_coverage, ranker_probabilities
from rankforge.training.config import TrainConfig, parse_config

VARIANTS = ("bce", "bce_warm", "confidence")
METRICS = ("auc", "gauc", "logloss")


@dataclass(frozen=True)
class Periods:
    all_events: Path  # periods 1-3: the new models train on 1-2 and test on 3
    previous_events: Path  # periods 1 and 3: the previous model trains on 1 (tested on 3 alike)
    period_2_from: int
    period_3_from: int
    counts: tuple[int, int, int]


def cut_periods(ratings: Path, folder: Path, cuts: tuple[float, float] = (0.6, 0.8)) -> Periods:
    """Write the two logs of the experiment as parquet and return the period boundaries."""
    log = load_interactions(ratings)
    t2, t3 = (int(log[TIMESTAMP].quantile(c, interpolation="lower")) + 1 for c in cuts)
    folder.mkdir(parents=True, exist_ok=True)
    all_events, previous = folder / "periods_123.parquet", folder / "periods_13.parquet"
    log.write_parquet(all_events)
    log.filter((pl.col(TIMESTAMP) < t2) | (pl.col(TIMESTAMP) >= t3)).write_parquet(previous)
    ts = log[TIMESTAMP]
    counts = (int((ts < t2).sum()), int(((ts >= t2) & (ts < t3)).sum()), int((ts >= t3).sum()))
    return Periods(all_events, previous, t2, t3, counts)


def job(
    log: Path,
    items: Path | None,
    test_from: int,
    output_dir: Path,
    seed: int,
    *,
    objective: dict[str, object] | None = None,
    warm_start: Path | None = None,
    epochs: int = 8,
    threads: int = 1,
) -> TrainConfig:
    """One ranking job of the experiment (every variant differs only in objective / warm start)."""
    return parse_config(
        {
            "seed": seed,
            "output_dir": str(output_dir),
            "data": {
                "source": "file",
                "path": str(log),
                "items_path": str(items) if items else None,
                "split": "time",
                "test_from": test_from,
                "validation_fraction": 0.1,
                "positive_threshold": 4.0,
                "history_len": 20,
            },
            "model": {"kind": "ranking", "embedding_dim": 16, "dense_sizes": [32], "over_sizes": [64, 1]},
            "objective": objective or {"name": "bce"},
            "optimizer": {"dense": "adamw", "dense_lr": 0.003, "weight_decay": 1e-4, "sparse_lr": 0.05},
            "training": {
                "epochs": epochs,
                "batch_size": 512,
                "patience": 2,
                "selection_metric": "logloss",
                "threads": threads,
                **({"warm_start": str(warm_start)} if warm_start else {}),
            },
            "negatives": {"count": 0},  # every rated item is an impression; rating >= 4 the click
            "mlflow": {"experiment": "rankforge-retraining-benchmark", "register_model": False},
        }
    )


@dataclass(frozen=True)
class SeedRun:
    seed: int
    bundles: dict[str, Path]  # previous + the three variants
    minutes: dict[str, float]
    best_epochs: dict[str, int]


def train_seed(periods: Periods, items: Path | None, root: Path, seed: int, epochs: int) -> SeedRun:
    from rankforge.pipelines.train import run_training

    os.environ.setdefault("TQDM_DISABLE", "1")
    bundles: dict[str, Path] = {}
    minutes: dict[str, float] = {}
    best: dict[str, int] = {}

    def run(name: str, config: TrainConfig) -> None:
        started = time.monotonic()
        result = run_training(config)
        minutes[name] = (time.monotonic() - started) / 60
        best[name] = int(result.metrics.get("best_epoch", 0))
        bundles[name] = result.bundle_dir

    new = periods.all_events
    run(
        "previous",
        job(
            periods.previous_events,
            items,
            periods.period_2_from,
            root / f"s{seed}/previous",
            seed,
            epochs=epochs,
        ),
    )
    previous = bundles["previous"]
    run("bce", job(new, items, periods.period_3_from, root / f"s{seed}/bce", seed, epochs=epochs))
    run(
        "bce_warm",
        job(
            new,
            items,
            periods.period_3_from,
            root / f"s{seed}/bce_warm",
            seed,
            warm_start=previous,
            epochs=epochs,
        ),
    )
    confidence: dict[str, object] = {"name": "confidence_ranking", "reference": str(previous)}
    run(
        "confidence",
        job(
            new,
            items,
            periods.period_3_from,
            root / f"s{seed}/confidence",
            seed,
            objective=confidence,
            epochs=epochs,
        ),
    )
    return SeedRun(seed, bundles, minutes, best)


@dataclass(frozen=True)
class Scored:
    labels: np.ndarray  # [n] test events of period 3, sorted by user
    users: np.ndarray  # [n] user index of each event
    probabilities: dict[str, list[np.ndarray]]  # variant -> one [n] array per seed
    previous_covered: np.ndarray  # [n] events whose item the previous model knows


def score(data: PreparedData, runs: list[SeedRun]) -> Scored:
    """Every bundle's P(click) of every period-3 event, through the bundle (as served)."""
    test = data.test_events.sort("user_idx", "item_idx", "timestamp")
    pairs = test.select("user_idx", "item_idx")
    probabilities: dict[str, list[np.ndarray]] = {name: [] for name in ("previous", *VARIANTS)}
    for run in runs:
        for name in probabilities:
            probabilities[name].append(ranker_probabilities(load_bundle(run.bundles[name]), pairs, data))
    raw = pairs.join(data.mapping.items, on="item_idx", how="left", maintain_order="left")
    raw = raw.join(data.mapping.users, on="user_idx", how="left", maintain_order="left")
    covered, _ = ranker_coverage(load_bundle(runs[0].bundles["previous"]), raw)
    return Scored(
        test["label"].to_numpy().astype(np.float64), test["user_idx"].to_numpy(), probabilities, covered
    )


def metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probs), "gauc": gauc(labels, probs, groups), "logloss": logloss(labels, probs)}


def user_resamples(users: np.ndarray, n_resamples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(event rows, group ids) of resamples of whole users; a user drawn twice is two groups."""
    keys, starts, counts = np.unique(users, return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, keys.size, keys.size)
        sizes = counts[drawn]
        offsets = np.repeat(starts[drawn] - np.cumsum(np.r_[0, sizes[:-1]]), sizes)
        out.append((offsets + np.arange(sizes.sum()), np.repeat(np.arange(keys.size), sizes)))
    return out


@dataclass(frozen=True)
class Comparison:
    challenger: str
    champion: str
    metric: str
    difference: float  # mean over seeds, full test set
    low: float
    high: float


def compare(
    scored: Scored, pairs: list[tuple[str, str]], n_resamples: int, seed: int = 0
) -> list[Comparison]:
    """Paired bootstrap over users of the seed-averaged metric difference: every model is scored
    on the same resampled users, so the users' shared difficulty cancels out."""
    y, users = scored.labels, scored.users
    names = sorted({name for pair in pairs for name in pair})

    def seed_means(name: str, rows: np.ndarray, groups: np.ndarray) -> dict[str, float]:
        per_seed = [metrics(y[rows], p[rows], groups) for p in scored.probabilities[name]]
        return {m: float(np.mean([s[m] for s in per_seed])) for m in METRICS}

    full = {name: seed_means(name, np.arange(y.size), users) for name in names}
    samples = [
        {name: seed_means(name, r, g) for name in names} for r, g in user_resamples(users, n_resamples, seed)
    ]
    out = []
    for challenger, champion in pairs:
        for metric in METRICS:
            diffs = np.array([s[challenger][metric] - s[champion][metric] for s in samples])
            low, high = np.quantile(diffs, [0.025, 0.975])
            estimate = full[challenger][metric] - full[champion][metric]
            out.append(Comparison(challenger, champion, metric, estimate, float(low), float(high)))
    return out


def report(
    scored: Scored, runs: list[SeedRun], comparisons: list[Comparison], periods: Periods, threads: int
) -> str:
    y, users = scored.labels, scored.users
    cov = scored.previous_covered
    lines = [
        f"MovieLens latest-small, {dt.date.today().isoformat()}, {machine()}, torch threads {threads}, "
        f"seeds {[r.seed for r in runs]}; periods 1/2/3 = {periods.counts[0]}/{periods.counts[1]}/"
        f"{periods.counts[2]} events; period-3 test events scored: {y.size} ({int(y.sum())} positive)",
        "",
        "| model (trained on) | AUC | GAUC | LogLoss | best epoch per seed | minutes per job |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "previous": "previous (period 1)*",
        "bce": "(a) BCE from scratch (1-2)",
        "bce_warm": "(b) BCE warm-started (1-2)",
        "confidence": "(c) Confidence Ranking (1-2)",
    }
    for name, label in labels.items():
        rows = np.flatnonzero(cov) if name == "previous" else np.arange(y.size)
        per_seed = [metrics(y[rows], p[rows], users[rows]) for p in scored.probabilities[name]]
        cells = []
        for m in METRICS:
            values = np.array([s[m] for s in per_seed])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        epochs = ",".join(str(r.best_epochs[name]) for r in runs)
        minutes = np.mean([r.minutes[name] for r in runs])
        lines.append(f"| {label} | {' | '.join(cells)} | {epochs} | {minutes:.1f} |")
    lines += [
        "",
        f"\\* on the {int(cov.sum())} period-3 events whose item the previous model knows "
        f"({cov.mean():.1%}); mean ± standard deviation over seeds.",
        "",
        "| difference (seed mean) | metric | estimate | 95% paired bootstrap over users |",
        "| --- | --- | --- | --- |",
    ]
    for c in comparisons:
        excludes = c.low > 0 or c.high < 0
        lines.append(
            f"| {c.challenger} − {c.champion} | {c.metric} | {c.difference:+.4f} "
            f"| [{c.low:+.4f}, {c.high:+.4f}]{' (excludes 0)' if excludes else ''} |"
        )
    return "\n".join(lines)


def run_benchmark(
    ratings: Path,
    items: Path | None,
    root: Path,
    seeds: list[int],
    epochs: int = 8,
    n_resamples: int = 500,
    threads: int = 1,
) -> str:
    if not ratings.is_file():
        raise DataError(f"benchmark data not found: {ratings} (see ../shared/README.md)")
    periods = cut_periods(ratings, root / "logs")
    runs = [train_seed(periods, items, root, seed, epochs) for seed in seeds]
    data = prepare(job(periods.all_events, items, periods.period_3_from, root / "eval", 0).data)
    scored = score(data, runs)
    pairs = [("confidence", "bce"), ("confidence", "bce_warm"), ("bce_warm", "bce")]
    comparisons = compare(scored, pairs, n_resamples)
    text = report(scored, runs, comparisons, periods, threads)
    (root / "retraining.json").write_text(
        json.dumps(
            {"runs": [asdict(r) for r in runs], "comparisons": [asdict(c) for c in comparisons]},
            default=str,
            indent=2,
        )
    )
    return text


ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ml-latest-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/retraining")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch
    torch.set_num_threads(1)
    print(
        run_benchmark(
            args.data / "ratings.csv",
            args.data / "movies.csv",
            args.output,
            args.seeds,
            args.epochs,
            args.resamples,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

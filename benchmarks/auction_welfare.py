"""Does the welfare rankloss (Lyu et al., ICML 2023) buy auction welfare over BCE? The paper's
claim, tested on simulated auctions where the true CTRs -- and so the exact welfare -- are known.

For each setting (bid distribution x misspecification) and seed, three auction models are trained
on the same simulated auctions (``features.auction_simulator``) with the same features:

    bce              pointwise log-loss on every shown ad
    welfare          the weighted rankloss (bid-weighted pairwise loss over each auction's ads)
    welfare_teacher  the same, its click labels calibrated by a teacher's CTRs: the BCE model of
                     the same seed, named as ``objective.reference`` (a bundle), as the paper
                     calibrates with teacher-generated labels

Each is scored on the held-out test auctions through its exported bundle (as served). The table
gives the welfare ratio to the oracle that knows the true CTRs, and paired bootstrap intervals
(resampling test auctions, the same resample for both models) of the ratio difference to BCE.

    .venv/bin/python benchmarks/auction_welfare.py [--seeds 0 1 2] [--auctions 20000]

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankforge.benchmarks.machine import machine
from rankforge.bundles.bundle import load_bundle
from rankforge.evaluation.auction_metrics import AuctionOutcomes, auction_outcomes
from rankforge.evaluation.bootstrap import Interval, paired_bootstrap_difference
from rankforge.features.pipeline import PreparedData, prepare
from rankforge.pipelines.auction_data import with_auctions
from rankforge.pipelines.bundle_scoring import served_auction_pctr
from rankforge.training.config import TrainConfig, parse_config

MODELS = ("bce", "welfare", "welfare_teacher")


@dataclass(frozen=True)
class Setting:
    name: str
    bid_distribution: str = "lognormal"
    bid_sigma: float = 0.8
    bid_ctr_correlation: float = 0.0
    misspecification: float = 1.0


SETTINGS = (
    Setting("lognormal, well specified", misspecification=0.0),
    Setting("lognormal, misspecified"),
    Setting("lognormal wide, misspecified", bid_sigma=1.5),
    Setting("lognormal, bid~CTR -0.5, misspecified", bid_ctr_correlation=-0.5),
    Setting("uniform, misspecified", bid_distribution="uniform"),
)


def job(
    setting: Setting, model: str, seed: int, out: Path, teacher: Path | None, n_auctions: int, epochs: int
) -> TrainConfig:
    objective: dict[str, object] = {"name": "bce"} if model == "bce" else {"name": "welfare_rankloss"}
    if model == "welfare_teacher":
        objective["reference"] = str(teacher)
    return parse_config(
        {
            "seed": seed,
            "output_dir": str(out),
            "data": {"synthetic": {"n_users": 300, "n_items": 400, "seed": seed}},
            "model": {"kind": "auction", "embedding_dim": 16, "dense_sizes": [32], "over_sizes": [64, 1]},
            "objective": objective,
            "optimizer": {"dense": "adam", "dense_lr": 0.003, "sparse_lr": 0.05},
            "training": {"epochs": epochs, "batch_size": 256, "patience": 2, "threads": 1},
            "auctions": {
                "simulate": {
                    "n_auctions": n_auctions,
                    "bid_distribution": setting.bid_distribution,
                    "bid_sigma": setting.bid_sigma,
                    "bid_ctr_correlation": setting.bid_ctr_correlation,
                    "misspecification": setting.misspecification,
                    "seed": seed,
                }
            },
            "mlflow": {"experiment": "rankforge-auction-benchmark", "register_model": False},
        }
    )


def served_pctr(bundle: Path, data: PreparedData) -> np.ndarray:
    """The bundle's pCTR of every test auction slot ``[A, M]``, through the served ranker."""
    assert data.auctions is not None
    return served_auction_pctr(load_bundle(bundle), data.auctions.test, data)


@dataclass(frozen=True)
class SeedRun:
    setting: str
    seed: int
    outcomes: dict[str, AuctionOutcomes]
    minutes: dict[str, float]


def run_seed(setting: Setting, seed: int, root: Path, n_auctions: int, epochs: int) -> SeedRun:
    from rankforge.pipelines.train import run_training

    os.environ.setdefault("TQDM_DISABLE", "1")
    bundles: dict[str, Path] = {}
    minutes: dict[str, float] = {}
    folder = root / setting.name.replace(" ", "_").replace(",", "").replace("~", "") / f"s{seed}"
    config = None
    for model in MODELS:
        config = job(setting, model, seed, folder / model, bundles.get("bce"), n_auctions, epochs)
        started = time.monotonic()
        bundles[model] = run_training(config).bundle_dir
        minutes[model] = (time.monotonic() - started) / 60
    assert config is not None and config.auctions is not None
    data = with_auctions(prepare(config.data), config.auctions, config.data)
    assert data.auctions is not None
    test = data.auctions.test
    assert test.true_ctr is not None
    outcomes = {
        model: auction_outcomes(served_pctr(bundle, data), **test.outcome_inputs())
        for model, bundle in bundles.items()
    }
    return SeedRun(setting.name, seed, outcomes, minutes)


def ratio_difference(runs: list[SeedRun], challenger: str, n_resamples: int) -> Interval:
    """Seed-mean welfare-ratio difference to BCE, paired bootstrap over test auctions (the seeds'
    auctions are resampled with one shared index: each seed's log has as many test auctions)."""
    n = min(r.outcomes["bce"].expected_welfare.size for r in runs)

    def mean_ratio(model: str):
        return lambda rows: float(np.mean([r.outcomes[model].welfare_ratio(rows) for r in runs]))

    return paired_bootstrap_difference(mean_ratio(challenger), mean_ratio("bce"), n, n_resamples)


def report(runs: list[SeedRun], n_auctions: int, epochs: int, n_resamples: int) -> str:
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"Simulated auctions (300 users, 400 ads, 8 ads per auction, {n_auctions} auctions, 20% test), "
        f"{dt.date.today().isoformat()}, {machine()}, torch threads 1, seeds {seeds}, {epochs} epochs max",
        "",
        "| setting | BCE | welfare rankloss | + teacher | welfare − BCE (95% CI) "
        "| + teacher − BCE (95% CI) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for setting in dict.fromkeys(r.setting for r in runs):
        mine = [r for r in runs if r.setting == setting]
        ratio = {m: np.mean([r.outcomes[m].welfare_ratio() for r in mine]) for m in MODELS}
        cells = []
        for model in MODELS[1:]:
            iv = ratio_difference(mine, model, n_resamples)
            mark = " **excludes 0**" if iv.excludes_zero() else ""
            cells.append(f"{iv.estimate:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]{mark}")
        lines.append(
            f"| {setting} | {ratio['bce']:.4f} | {ratio['welfare']:.4f} | {ratio['welfare_teacher']:.4f} "
            f"| {cells[0]} | {cells[1]} |"
        )
    lines += ["", "Welfare ratio = expected welfare of the auctions run on the model's pCTRs / the oracle's."]
    return "\n".join(lines)


def run_benchmark(
    root: Path,
    seeds: list[int],
    settings: tuple[Setting, ...] = SETTINGS,
    n_auctions: int = 20_000,
    epochs: int = 10,
    n_resamples: int = 1000,
) -> str:
    runs = [run_seed(setting, seed, root, n_auctions, epochs) for setting in settings for seed in seeds]
    root.mkdir(parents=True, exist_ok=True)
    summary = [
        {
            "setting": r.setting,
            "seed": r.seed,
            "minutes": r.minutes,
            **{m: r.outcomes[m].welfare_ratio() for m in MODELS},
        }
        for r in runs
    ]
    (root / "auctions.json").write_text(json.dumps(summary, indent=2))
    return report(runs, n_auctions, epochs, n_resamples)


ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--auctions", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/auctions")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch
    torch.set_num_threads(1)
    print(run_benchmark(args.output, args.seeds, n_auctions=args.auctions, epochs=args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

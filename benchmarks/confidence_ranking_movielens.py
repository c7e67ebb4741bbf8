"""Confidence Ranking vs BCE (from scratch and warm-started) when retraining a CTR model.

    .venv/bin/python benchmarks/confidence_ranking_movielens.py [--seeds 0 1 2] [--epochs 8]

MovieLens latest-small from ``../shared/data`` cut by time into three periods; see
``rankforge.pipelines.retraining_benchmark`` for the design. Prints the tables recorded in
``benchmarks/README.md``. Run it alone: one torch thread per job, jobs one after another.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch

from rankforge.pipelines.retraining_benchmark import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ml-latest-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/retraining")
    args = parser.parse_args()
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

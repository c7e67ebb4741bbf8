"""Welfare rankloss (with and without teacher calibration) vs BCE on simulated ad auctions.

    .venv/bin/python benchmarks/auction_welfare.py [--seeds 0 1 2] [--auctions 20000]

See ``rankforge.pipelines.auction_benchmark`` for the design. Prints the table recorded in
``benchmarks/README.md``. Run it alone: one torch thread per job, jobs one after another.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch

from rankforge.pipelines.auction_benchmark import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--auctions", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/auctions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(run_benchmark(args.output, args.seeds, n_auctions=args.auctions, epochs=args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

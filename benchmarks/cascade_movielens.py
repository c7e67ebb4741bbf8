"""A retrieval -> rank cascade trained stage by stage vs as one network (LCRON), end to end.

    .venv/bin/python benchmarks/cascade_movielens.py [--seeds 0 1 2] [--epochs 6]

See ``rankforge.pipelines.cascade_benchmark`` for the design. Prints the tables recorded in
``benchmarks/README.md``. Run it alone: one torch thread per job, jobs one after another.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch

from rankforge.pipelines.cascade_benchmark import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ml-latest-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--negatives", type=int, default=15)
    parser.add_argument("--k1", type=int, default=100)
    parser.add_argument("--k2", type=int, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/cascade")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(run_benchmark(args.data, args.output, args.seeds, args.epochs, args.negatives, args.k1, args.k2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

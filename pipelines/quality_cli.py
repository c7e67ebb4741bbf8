"""``rankforge benchmark-quality``: the Gowalla retrieval-quality table (benchmarks/quality_gowalla.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rankforge.errors import RankforgeError
from rankforge.pipelines.quality_benchmark import GOWALLA_MODELS, run_benchmark


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per model, not per batch
    rows = run_benchmark(
        Path(args.configs), list(args.models), args.budget, args.threads, args.output, args.parallel
    )
    return 0 if len(rows) == len(args.models) else 1  # a failed model was reported on stderr


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(GOWALLA_MODELS),
        metavar="NAME",
        help=f"configs to run, from --configs (default: all: {' '.join(GOWALLA_MODELS)})",
    )
    parser.add_argument("--configs", default="configs/gowalla", help="config folder (default: %(default)s)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock minutes per model, data preparation to bundle "
        "(default: each config's training.time_budget_minutes)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="models trained at once, each in its own process with --threads threads (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per job (default: %(default)s; 1 stays stable on a shared 2-core machine)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/benchmarks/quality_gowalla.json"),
        help="JSON rows written after each model (default: %(default)s)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark-quality",
        help="train the Gowalla paper configs and print Recall/NDCG@20 beside the published numbers",
        description=__doc__,
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quality_gowalla.py", description=__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except RankforgeError as exc:
        print(f"quality_gowalla: error: {exc}", file=sys.stderr)
        return 2

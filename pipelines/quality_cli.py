"""``rankforge benchmark-quality``: the papers' benchmarks with the authors' protocols, one data set
at a time (benchmarks/quality.py): Recall/NDCG@20 beside the published numbers, time to quality."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rankforge.errors import RankforgeError
from rankforge.pipelines.quality_benchmark import DATASETS, run_benchmark


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per model, not per batch
    dataset = DATASETS[args.dataset]
    names = list(args.models or [e.name for e in dataset.entries if e.default])
    output = args.output or Path(f"runs/benchmarks/quality_{dataset.name}.json")
    rows = run_benchmark(
        dataset,
        names,
        budget_minutes=args.budget,
        threads=args.threads,
        output=output,
        parallel=args.parallel,
        search_epochs=args.search_epochs,
        seeds=args.seeds,
    )
    return 0 if len(rows) == len(names) else 1  # a failed model was reported on stderr


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="gowalla",
        help="the benchmark: its configs are configs/<folder>/NAME.toml (default: %(default)s)",
    )
    parser.add_argument(
        "--models", nargs="+", metavar="NAME", help="models to run (default: every model of the data set)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock minutes per job, data preparation to bundle "
        "(default: each config's training.time_budget_minutes)",
    )
    parser.add_argument(
        "--search-epochs",
        type=int,
        default=None,
        help="train each value of a searched grid for at most this many epochs, then the selected "
        "value in full (default: every grid value in full)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="train each selected config with this many seeds (default: 1)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="jobs trained at once, each in its own process with --threads threads (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per job (default: each config's training.threads)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON rows (default: runs/benchmarks/quality_DATASET.json)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark-quality",
        help="train a paper benchmark's configs and print Recall/NDCG@20 beside the published numbers",
        description=__doc__,
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quality.py", description=__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except RankforgeError as exc:
        print(f"quality: error: {exc}", file=sys.stderr)
        return 2

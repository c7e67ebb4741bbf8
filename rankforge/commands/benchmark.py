"""``rankforge benchmark-quality``: the papers' benchmarks with the authors' protocols, one data
set at a time (the logic and the script: ``benchmarks/quality.py``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rankforge.benchmarks import quality

    parser = subparsers.add_parser(
        "benchmark-quality",
        help="train a paper benchmark's configs and print Recall/NDCG@20 beside the published numbers",
        description=__doc__,
    )
    quality.add_arguments(parser)
    parser.set_defaults(func=quality.run)

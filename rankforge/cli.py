"""``rankforge`` command line: one entry point, one sub-command module per job.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` and sets ``func`` on its
parser; adding a job means adding its module here, nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rankforge.errors import RankforgeError
from rankforge.quiet import quiet_third_party

COMMAND_MODULES: tuple[str, ...] = (
    "rankforge.pipelines.demo_cli",
    "rankforge.pipelines.auction_cli",
    "rankforge.pipelines.evaluate_cli",
    "rankforge.pipelines.prepare_cli",
    "rankforge.pipelines.train_cli",
    "rankforge.pipelines.quality_cli",
    "rankforge.serving.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankforge",
        description="Recommender ranking platform: train, evaluate, promote and serve retrieval and "
        "ranking models. `rankforge demo` runs everything once; `rankforge COMMAND --help` explains one.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except RankforgeError as exc:
        print(f"rankforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

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

#: Packages whose exceptions are the tracking store's (a damaged database, a server that failed):
#: said in one line, exit 2, like a bad input, not a traceback.
STORE_ERRORS = ("sqlalchemy", "mlflow")

COMMAND_MODULES: tuple[str, ...] = (
    "rankforge.commands.demo",
    "rankforge.commands.auctions",
    "rankforge.commands.evaluate",
    "rankforge.commands.prepare",
    "rankforge.commands.train",
    "rankforge.commands.benchmark",
    "rankforge.commands.serve",
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
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in STORE_ERRORS:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"rankforge {args.command}: error: the MLflow store failed: {first[:200]}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``rankforge prepare CONFIG --out DIR``: a log larger than memory into training shards.

Reads the config's ``[data]`` (a training config or a data config), prepares it out of core
(:mod:`rankforge.features.out_of_core`) and prints how to train on the result: a config whose
``[data]`` is ``source = "prepared"`` with ``path`` the output directory.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rankforge.errors import ConfigError


def _run(args: argparse.Namespace) -> int:
    from rankforge.features.out_of_core import MANIFEST, prepare_to_disk
    from rankforge.features.pipeline import DataConfig

    if args.events_per_bucket < 1_000:
        raise ConfigError(f"--events-per-bucket must be at least 1000, got {args.events_per_bucket}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = DataConfig.from_file(args.config)
    engine = None
    if args.engine == "ray":
        from rankforge.features.ray_engine import RayEngine

        engine = RayEngine(args.address, workers=args.workers, max_retries=args.retries)
    elif args.address is not None:
        raise ConfigError("--address names a Ray cluster: use it with --engine ray")
    out = prepare_to_disk(config, args.out, events_per_bucket=args.events_per_bucket, engine=engine)
    meta = json.loads((out / MANIFEST).read_text())
    seconds = sum(meta["phase_seconds"].values())
    print(f"prepared {meta['events']:,} events in {meta['buckets']} bucket(s), {seconds:.1f}s: {out}")
    print(f'train on it with [data] source = "prepared", path = "{out.resolve()}"')
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="prepare a log larger than memory into parquet shards (out of core)",
        description="Scan a log file, split it, fit the id mapping and write training examples, feature "
        "tables and held-out events as parquet shards, one user bucket in memory at a time.",
    )
    parser.add_argument("config", help="a config whose [data] names the log (source = 'file')")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced when complete)")
    parser.add_argument(
        "--events-per-bucket",
        type=int,
        default=4_000_000,
        help="events held in memory at once (default 4M, about 1.5 GB)",
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="who prepares the buckets: this process, one after another (default), or Ray tasks",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the Ray cluster to join (ray://host:10001, host:6379 or auto; default: start a local one)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="CPUs of a local Ray cluster (default: %(default)s)"
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="retries of a failed bucket on Ray (default: %(default)s)"
    )
    parser.set_defaults(func=_run)

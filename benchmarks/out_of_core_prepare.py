"""Out-of-core preparation against the bare Polars floor, on synthetic parquet logs.

For each size: a parquet log (``user_id, item_id, rating, timestamp``; 100 events per user on
average, a catalogue of ``events / 200`` items, Zipf-like item popularity) is written once, then
two fresh processes run on it, one after the other, each reporting its wall time and peak RSS:

* floor: ``scan_parquet`` + ``group_by(user)`` + each user's last 20 items by time, streaming;
* rankforge: ``prepare_to_disk`` (check, user buckets, leave-last-out split, id mapping,
  point-in-time histories, retrieval and ranking example shards, feature tables), in one process
  and on a local Ray cluster of 1 and 2 workers (``--engine-workers``; the cluster starts before
  the clock): wall time, the driver's peak RSS and the largest peak RSS of a worker.

Target (issue #11): 100M events prepared in under 24 GB (the machine) and within 4x the floor.

Then (``--stream-max`` sizes and below) a third process opens the prepared directory as training
data and streams one epoch of ranking batches (features, gathered histories, 4 sampled
negatives per event; no model), which is what the trainer reads: its time and peak RSS.

    .venv/bin/python benchmarks/out_of_core_prepare.py --sizes 1e6 2e7 1e8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 5_000_000

FLOOR = """
import json, resource, sys, time
import polars as pl
start = time.perf_counter()
out = (
    pl.scan_parquet(sys.argv[1])
    .group_by("user_id")
    .agg(pl.col("item_id").sort_by("timestamp").tail(20).alias("history"), pl.len())
    .collect(engine="streaming")
)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": out.height,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

RANKFORGE = """
import json, resource, sys, time
from pathlib import Path
from rankforge.features.out_of_core import prepare_to_disk
from rankforge.features.pipeline import DataConfig
config = DataConfig(source="file", path=sys.argv[1], layout="parquet", split="leave_last_out")
engine = None
if int(sys.argv[4]) > 0:  # a local Ray cluster of that many workers, started before the clock
    import ray
    from rankforge.features.ray_engine import RayEngine
    ray.init(num_cpus=int(sys.argv[4]), include_dashboard=False, log_to_driver=False)
    engine = RayEngine(workers=int(sys.argv[4]))
start = time.perf_counter()
prepare_to_disk(config, sys.argv[2], events_per_bucket=int(sys.argv[3]), engine=engine)
seconds = time.perf_counter() - start
meta = json.loads((Path(sys.argv[2]) / "prepared.json").read_text())
print(json.dumps({"seconds": seconds, "bucket_peak_gb": meta["bucket_peak_gb"],
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


STREAM = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from rankforge.features.pipeline import DataConfig, prepare
from rankforge.training.batches import FeatureTables, NegativeSampler, RankingBatches
start = time.perf_counter()
data = prepare(DataConfig(source="prepared", path=sys.argv[1]))
tables = FeatureTables.build(data)
batches = RankingBatches(data, tables, NegativeSampler(tables.item_events, "uniform"), 4, batch_size=4096)
rows = sum(b.size for b in batches)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": rows,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_log(path: Path, n_events: int, seed: int = 0) -> None:
    """A synthetic log written chunk by chunk (the generator never holds it whole)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n_events // 100, 1), max(n_events // 200, 2)
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("item_id", pa.int64()),
            ("rating", pa.float32()),
            ("timestamp", pa.int64()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_events, CHUNK):
            n = min(CHUNK, n_events - start)
            items = np.minimum((rng.pareto(1.2, n) * n_items / 50).astype(np.int64), n_items - 1)
            table = pa.table(
                {
                    "user_id": rng.integers(0, n_users, n),
                    "item_id": items,
                    "rating": rng.integers(1, 6, n).astype(np.float32),
                    "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n),
                },
                schema=schema,
            )
            writer.write_table(table)


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "POLARS_MAX_THREADS": str(os.cpu_count())}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 2e7, 1e8])
    parser.add_argument("--events-per-bucket", type=int, default=4_000_000)
    parser.add_argument(
        "--engine-workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="0: the single-process path; N: a local Ray cluster of N workers (default: 0 1 2)",
    )
    parser.add_argument("--stream-max", type=float, default=2e7, help="largest size whose epoch is streamed")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where logs and outputs go (default: a temp dir)"
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ooc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}; "
        f"POLARS_MAX_THREADS={os.cpu_count()}; {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| events | engine | floor s | floor GB | rankforge s | driver GB | worker GB | events/s | x floor "
        "| disk GB |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    streamed: list[str] = []
    for size in args.sizes:
        n = int(size)
        log = work / f"log_{n}.parquet"
        if not log.exists():
            write_log(log, n)
        floor = run(FLOOR, str(log))
        out = work / f"prepared_{n}"
        for workers in args.engine_workers:
            ours = run(RANKFORGE, str(log), str(out), str(args.events_per_bucket), str(workers))
            disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**30
            if n <= args.stream_max and workers == 0:
                read = run(STREAM, str(out))
                streamed.append(
                    f"| {n:,} | {read['rows']:,} | {read['seconds']:.1f} | "
                    f"{read['rows'] / read['seconds']:,.0f} | {read['peak_gb']:.2f} |"
                )
            engine = "one process" if workers == 0 else f"Ray, {workers} worker(s)"
            worker_gb = f"{ours['bucket_peak_gb']:.2f}" if workers else "-"
            print(
                f"| {n:,} | {engine} | {floor['seconds']:.1f} | {floor['peak_gb']:.2f} | "
                f"{ours['seconds']:.1f} | {ours['peak_gb']:.2f} | {worker_gb} | {n / ours['seconds']:,.0f} | "
                f"{ours['seconds'] / floor['seconds']:.1f} | {disk:.1f} |",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    if streamed:
        print("\none epoch of ranking batches streamed from the shards (1 torch thread, batch 4096, 4 negs):")
        print("| events | rows | seconds | rows/s | peak GB |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(streamed))


if __name__ == "__main__":
    main()

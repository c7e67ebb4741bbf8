"""What a pause between requests does to the CPU cost of the same work on this machine.

A server at 300-400 QPS spends most of each 2.5-3.3 ms between requests idle, and a benchmark
that divides its CPU time by the requests answered charges it whatever the machine makes work
cost after such a pause. This measures that on a fixed piece of work that has nothing to do with
rankforge (a float32 matrix-vector product over 100,000 x 64, then a 2,000-step Python loop:
about a millisecond, like a request), on one pinned core, in rounds that alternate:

* ``none``: back to back;
* ``sleep``: ``--gap-ms`` asleep before each call (the core idles, as a lightly loaded server's);
* ``spin``: ``--gap-ms`` of a Python busy loop before each call (the core stays busy).

    .venv/bin/python benchmarks/idle_gap.py [--cpu 0] [--gap-ms 1 3 10] [--calls 800] [--rounds 2]

CPU time is the calling thread's (``time.thread_time``), measured around each call only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from collections.abc import Callable

import numpy as np


def _work(matrix: np.ndarray, query: np.ndarray) -> Callable[[], float]:
    def call() -> float:
        scores = matrix @ query
        total = 0
        for i in range(2000):
            total += i
        return float(scores[0]) + total

    return call


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cpu_per_call(call: Callable[[], object], mode: str, gap_s: float, calls: int) -> float:
    """Mean CPU ms of ``call`` with ``mode`` ("none", "sleep" or "spin") for ``gap_s`` before each."""
    spent = 0.0
    for _ in range(calls):
        if mode == "sleep":
            time.sleep(gap_s)
        elif mode == "spin":
            _spin(gap_s)
        start = time.thread_time()
        call()
        spent += time.thread_time() - start
    return spent / calls * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--calls", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    rng = np.random.default_rng(0)
    call = _work(rng.random((100_000, 64), dtype=np.float32), rng.random(64, dtype=np.float32))
    for _ in range(100):  # warm
        call()
    print(
        f"{dt.date.today().isoformat()}, {platform.processor() or platform.machine()}, pinned to cpu "
        f"{args.cpu}, {args.calls} calls a cell, CPU ms per call (the calling thread)"
    )
    print(f"{'round':>5} {'gap ms':>6} {'none':>7} {'sleep':>7} {'spin':>7} {'sleep/none':>10}")
    for round_ in range(1, args.rounds + 1):
        for gap_ms in args.gap_ms:
            cells = {m: cpu_per_call(call, m, gap_ms / 1e3, args.calls) for m in ("none", "sleep", "spin")}
            print(
                f"{round_:>5} {gap_ms:>6.1f} {cells['none']:>7.3f} {cells['sleep']:>7.3f} "
                f"{cells['spin']:>7.3f} {cells['sleep'] / cells['none']:>10.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

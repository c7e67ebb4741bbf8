"""The exported graphs' own cost: microseconds per ONNX Runtime call of each bundle's graphs
(ranker, user tower, item tower), at batch 1 (a request's user) and 200 (a request's
candidates), one intra-op thread as the server runs them.

    .venv/bin/python benchmarks/onnx_graphs.py BUNDLE_DIR [BUNDLE_DIR ...] [--repeats 3]

Give two bundles (say, one exported before a change to the graphs and one after) to compare
them: calls alternate between the bundles, ``--repeats`` times, so a noisy machine slows both
alike; each cell is the median of the repeats' means. Inputs are random ids inside each table
(``-1`` padding included) and random dense features.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rankforge.benchmarks.machine import machine
from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.runtime import open_session

GRAPHS = ("ranker.onnx", "user_tower.onnx", "item_tower.onnx")
BATCHES = (1, 200)


def random_feed(session: ort.InferenceSession, rows: dict[str, int], n: int, seed: int = 0) -> dict:
    """A feed of ``n`` rows: floats for float inputs, ids in ``[-1, rows[input])`` otherwise."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in session.get_inputs():
        width = spec.shape[1]
        if "float" in spec.type:
            feed[spec.name] = rng.random((n, width), dtype=np.float32)
        else:
            feed[spec.name] = rng.integers(-1, rows[spec.name], (n, width))
    return feed


def table_rows(session: ort.InferenceSession) -> dict[str, int]:
    """Each id input's table size, probed: the largest id its lookup accepts, by doubling and
    bisection (a few dozen calls; ONNX Runtime's log of the refused ones is silenced)."""
    sizes = {}
    for spec in session.get_inputs():
        if "float" in spec.type:
            continue
        ok, bad = 0, 1
        while _accepts(session, spec.name, bad):
            ok, bad = bad, bad * 2
        while bad - ok > 1:
            mid = (ok + bad) // 2
            ok, bad = (mid, bad) if _accepts(session, spec.name, mid) else (ok, mid)
        sizes[spec.name] = ok + 1
    return sizes


def _accepts(session: ort.InferenceSession, name: str, largest: int) -> bool:
    feed = {}
    for spec in session.get_inputs():
        shape = (1, spec.shape[1])
        if "float" in spec.type:
            feed[spec.name] = np.zeros(shape, dtype=np.float32)
        else:
            feed[spec.name] = np.full(shape, largest if spec.name == name else 0, dtype=np.int64)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # fatal only: the refused probes are expected
    try:
        session.run(None, feed, quiet)
    except Exception:  # onnxruntime raises its own types for an out-of-range Gather
        return False
    return True


def mean_us(session: ort.InferenceSession, feed: dict, calls: int) -> float:
    for _ in range(20):
        session.run(None, feed)
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    sessions = {}
    for directory in args.bundles:
        bundle = load_bundle(directory)
        for graph in GRAPHS:
            if graph in bundle.manifest.files:
                sessions[(str(directory), graph)] = open_session(str(bundle.path(graph)), 1)
    print(f"{machine()}, onnxruntime {ort.__version__}, 1 thread; {dt.date.today()}")
    print(f"{'graph':<16} {'batch':>5}  " + "  ".join(f"{str(b)[-40:]:>40}" for b in args.bundles))
    for graph in GRAPHS:
        present = [(str(b), sessions.get((str(b), graph))) for b in args.bundles]
        if not any(s for _, s in present):
            continue
        rows = next(table_rows(s) for _, s in present if s is not None)
        for n in BATCHES:
            feeds = {b: random_feed(s, rows, n) for b, s in present if s is not None}
            times: dict[str, list[float]] = {b: [] for b in feeds}
            for _ in range(args.repeats):
                for b, s in present:
                    if s is not None:
                        times[b].append(mean_us(s, feeds[b], args.calls))
            cells = [
                f"{statistics.median(times[b]):>37.0f} us" if b in times else f"{'-':>40}" for b, _ in present
            ]
            print(f"{graph:<16} {n:>5}  " + "  ".join(cells))


if __name__ == "__main__":
    main()

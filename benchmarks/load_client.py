"""An open-loop load generator for the ``Rank`` RPC, run as its own lean process.

    .venv/bin/python benchmarks/load_client.py --address HOST:PORT --users 1 2 3 --qps 400 --seconds 10

Each request is sent at its scheduled time (``i / qps`` after the start) whatever the earlier ones
did, so a slow server shows as queueing in the latency, which is measured from the scheduled
time. Prints one JSON object: the latencies' percentiles (ms), ok and error counts.

Why a process of its own: the latency is the client's view, so the client's own pauses are in
it. The benchmark that builds the bundles has imported torch and run its ONNX exporter: it holds
~640k Python objects, and a full garbage collection there takes 0.35-0.45 s (measured), which
a client living in it, or sharing its core, records as server latency. At 300-400 QPS against
the same server, the client living in it recorded p99 87-196 ms, this client sharing its core
197-991 ms, and this client with the core to itself 3.5 ms. This module imports only gRPC,
numpy and the service's stubs, and freezes its start-up objects out of the collector's sight
(``gc.freeze``).
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time

import grpc
import numpy as np

from rankforge.serving.client import rank_request
from rankforge.serving.proto import ranking_pb2_grpc


def open_loop(address: str, users: list[int], k: int, qps: float, seconds: float) -> tuple[np.ndarray, int]:
    """(latencies ms measured from each request's scheduled send time, errors)."""
    channel = grpc.insecure_channel(address)
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    grpc.channel_ready_future(channel).result(timeout=30)
    requests = [rank_request(user, k) for user in users]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    pending = threading.Semaphore(0)
    n = int(qps * seconds)
    gc.freeze()
    start = time.perf_counter() + 0.5

    def done(scheduled: float):
        def callback(future: grpc.Future) -> None:
            elapsed = (time.perf_counter() - scheduled) * 1e3
            with lock:
                if future.exception() is None:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
            pending.release()

        return callback

    for i in range(n):
        scheduled = start + i / qps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        future = stub.Rank.future(requests[i % len(requests)], timeout=5.0)
        future.add_done_callback(done(scheduled))
    for _ in range(n):
        pending.acquire(timeout=30)
    channel.close()
    return np.asarray(latencies), errors[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--users", type=int, nargs="+", required=True, help="user ids, sent in turn")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--qps", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    latencies, errors = open_loop(args.address, args.users, args.k, args.qps, args.seconds)
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9]) if len(latencies) else [float("nan")] * 3
    print(json.dumps({"ok": len(latencies), "errors": errors, "p50": p50, "p99": p99, "p999": p999}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

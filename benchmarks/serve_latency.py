"""Loopback latency and throughput of the ``Rank`` RPC at a fixed concurrency.

Builds small bundles from synthetic data (freshly initialised models: serving cost does not depend
on the weights), materialises features into the local Redis under a throw-away prefix, starts the
server in-process on a free loopback port and drives it from client threads. Request count and
wall time are both bounded; the prefix is deleted afterwards.

    .venv/bin/python benchmarks/serve_latency.py [--concurrency 8] [--requests 2000] [--max-seconds 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.infra.redis_server import ensure_redis
from rankforge.models.inputs import sparse_features
from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower
from rankforge.serving.client import RankingClient
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_reader import connect
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.server import RankingServer, ServerConfig
from rankforge.settings import Settings

MAX_GENRES = 8


def build_bundles(data: PreparedData, root: str) -> tuple[str, str]:
    torch.manual_seed(0)
    users = sparse_features(data.inputs, "user")
    items = sparse_features(data.inputs, "item")
    retrieval, ranker = os.path.join(root, "retrieval"), os.path.join(root, "ranker")
    os.makedirs(retrieval)
    os.makedirs(ranker)
    build_retrieval_bundle(TwoTower(users, items), data, retrieval)
    build_ranker_bundle(RankingModel(users + items, DENSE_FEATURES), data, ranker)
    return retrieval, ranker


def drive(
    address: str,
    user_ids: list[int],
    k: int,
    candidates: list[int] | None,
    concurrency: int,
    n: int,
    max_s: float,
) -> tuple[np.ndarray, float, int]:
    """(latencies of successful calls in ms, wall seconds, errors)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + max_s
    counter = iter(range(n))

    with RankingClient(address, timeout_s=2.0) as client:
        client.rank(user_ids[0], k=k, candidates=candidates)  # warm-up: connection + first ORT run

        def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.monotonic() > stop_at:
                    return
                start = time.perf_counter()
                try:
                    client.rank(user_ids[i % len(user_ids)], k=k, candidates=candidates)
                except Exception:  # counted, not fatal: the table reports them
                    with lock:
                        errors += 1
                    continue
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for _ in range(concurrency):
                pool.submit(worker)
        wall = time.perf_counter() - began
    return np.asarray(latencies), wall, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()

    redis_url = Settings.from_env().redis_url
    ensure_redis(redis_url)
    data = prepare(DataConfig(synthetic=SyntheticConfig(n_users=args.users, n_items=args.items)))
    layout = KeyLayout(f"rfbench-{uuid.uuid4().hex[:8]}")
    client = connect(redis_url, timeout_s=5.0)
    with tempfile.TemporaryDirectory(prefix="rankforge-bench-") as root:
        retrieval, ranker = build_bundles(data, root)
        FeatureWriter(client, layout, ttl_s=600).write(data)
        server = RankingServer(
            ServerConfig(
                retrieval=retrieval,
                ranker=ranker,
                redis_url=redis_url,
                feature_prefix=layout.prefix,
                port=0,
                workers=args.workers,
                refresh_interval_s=0,
            )
        ).start()
        try:
            user_ids = [int(u) for u in data.mapping.users["user_id"]]
            candidates = [int(i) for i in data.mapping.items["item_id"].head(100)]
            rows = []
            for name, cands in (("retrieve+rank", None), ("rank 100 given", candidates)):
                lat, wall, errors = drive(
                    server.address, user_ids, args.k, cands, args.concurrency, args.requests, args.max_seconds
                )
                rows.append((name, len(lat), errors, *np.percentile(lat, [50, 99]), len(lat) / wall))
        finally:
            server.stop(1)
            keys = list(client.scan_iter(f"{layout.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
    print(
        f"\nRank RPC over loopback: {args.users} users, {args.items} items, k={args.k}, "
        f"concurrency {args.concurrency}, {args.workers} server threads, {os.cpu_count()} CPUs"
    )
    print(f"{'path':<16} {'ok':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8}")
    for name, ok, errors, p50, p99, qps in rows:
        print(f"{name:<16} {ok:>6} {errors:>6} {p50:>8.2f} {p99:>8.2f} {qps:>8.0f}")


if __name__ == "__main__":
    main()

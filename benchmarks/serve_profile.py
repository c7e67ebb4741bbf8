"""Where a Rank request's time goes, and what p99 the service holds at a fixed request rate.

    .venv/bin/python benchmarks/serve_profile.py [--items 1000000] [--index ivf] [--nprobe 1024]
        [--qps 100 400] [--processes 1 2] [--server-cpus 0 --client-cpus 1]

1. Profile: the ``Rank`` handler of an in-process server called directly (no gRPC; on
   ``--server-cpus`` when given), sequential requests with stage timing on: mean ms per stage
   (Redis reads, user tower, index search, ranker feed + ONNX, the rest of the handler) and the
   handler's CPU per request; then the same calls
   with ``--profile-gap-ms`` asleep before each, as a server at a few hundred QPS idles between
   requests (on the 2-core VM the same work costs 40-80% more CPU after such a pause: what the
   load's server CPU per request carries beyond the handler and the front end).
2. Load: ``rankforge serve --processes P`` as its own process(es) on a fixed port; an open-loop
   client sends requests at each ``--qps`` (each at its scheduled time, whatever the previous
   ones did, so queueing shows in the latency) for ``--seconds``; p50/p99/p99.9 and errors per process
   count, and the server's own CPU ms per request (its process tree's CPU time over the load
   window, from ``/proc``) with the QPS one core holds at that cost. ``--server-cpus 0
   --client-cpus 1`` pin the server and the load generator to different cores.

Retrieve + rank: k = 20 from 200 candidates (retrieve_factor 10). The retrieval model's item rows
are ``ann_index.py``'s vectors (``--vectors``; ``fitted --fit-from BUNDLE``: drawn from a mixture
fitted to a trained model's item vectors), so the index is measured at a recall that means
something; the ranker is fresh (its cost does not depend on its weights). The load's client is
``load_client.py``, a lean process of its own (its docstring says why that matters for p99).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from rankforge.benchmarks.ann_index import catalogue
from rankforge.benchmarks.idle_gap import cpu_per_call
from rankforge.bundles.ann_index import IndexConfig
from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.infra.redis_server import ensure_redis
from rankforge.models.inputs import sparse_features
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.ranking import RankingModel
from rankforge.serving.client import RankingClient, rank_request
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_reader import connect
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.ranking_service import ServiceLimits
from rankforge.serving.server import RankingServer, ServerConfig
from rankforge.serving.stage_profile import StageProfile
from rankforge.settings import Settings

K, FACTOR = 20, 10


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--index", choices=["exact", "hnsw", "ivf", "scann"], default="ivf")
    parser.add_argument("--nprobe", type=int, default=128, help="IVF cells (ScaNN leaves) scanned per query")
    parser.add_argument(
        "--ivf-codes", choices=["flat", "sq8"], default="flat", help="IVF cells: vectors or 8-bit codes"
    )
    parser.add_argument("--ef-search", type=int, default=256, help="HNSW candidates kept per query")
    parser.add_argument(
        "--tune", action="store_true", help="the export picks the search knob for recall 0.95 (tune_search)"
    )
    parser.add_argument("--vectors", choices=["clustered", "random", "fitted"], default="clustered")
    parser.add_argument(
        "--fit-from", type=Path, help="a trained retrieval bundle: the 'fitted' vectors' source"
    )
    parser.add_argument("--qps", type=float, nargs="+", default=[400], help="open-loop request rates")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile-requests", type=int, default=2000)
    parser.add_argument(
        "--profile-gap-ms",
        type=float,
        default=3.0,
        help="also profile the handler with this pause before each call (0: not)",
    )
    parser.add_argument(
        "--server-cpus", help="pin the served process(es) to these cpus (taskset list, e.g. 0)"
    )
    parser.add_argument("--client-cpus", help="pin the load generator to these cpus (e.g. 1) while it runs")
    parser.add_argument("--skip-profile", action="store_true", help="only the open-loop load")
    return parser.parse_args()


def _bundles(args: argparse.Namespace, data: PreparedData, root: str) -> tuple[str, str]:
    """Fresh retrieval and ranker bundles under ``root``; returns their directories."""
    torch.manual_seed(0)
    u, i = sparse_features(data.inputs, "user"), sparse_features(data.inputs, "item")
    retrieval, ranker = os.path.join(root, "retrieval"), os.path.join(root, "ranker")
    os.makedirs(retrieval)
    os.makedirs(ranker)
    index = IndexConfig(
        kind=args.index,
        nprobe=args.nprobe,
        ivf_codes=args.ivf_codes,
        ef_search=args.ef_search,
        tune_search=args.tune,
        on_low_recall="warn",
    )
    # matrix factorisation whose item rows are the ANN benchmark's vectors (trained-like:
    # clustered tastes, popular directions denser; or random directions), users near items they
    # would like: a fresh two-tower maps every item to nearly the same vector, so every user
    # would retrieve the same items and the index would be measured on one easy query
    items = catalogue(data.n_items, 64, args.vectors, args.fit_from)
    dim = items.shape[1]
    mf = MatrixFactorization(data.n_users, data.n_items, dim)
    rng = np.random.default_rng(1)
    users = items[rng.choice(data.n_items, data.n_users)] + 0.05 * rng.normal(size=(data.n_users, dim))
    with torch.no_grad():
        mf.ebc.embedding_bags["t_item_id"].weight.copy_(torch.from_numpy(items))
        mf.ebc.embedding_bags["t_user_id"].weight.copy_(torch.from_numpy(users.astype(np.float32)))
    manifest = build_retrieval_bundle(mf, data, retrieval, index=index)
    build_ranker_bundle(RankingModel(u + i, DENSE_FEATURES), data, ranker)
    print(f"index {manifest.index or 'exact'}", flush=True)
    return retrieval, ranker


class _InProcessCall:
    """The little of ``grpc.ServicerContext`` the handler uses, for calls without gRPC: a 5 s
    deadline, a caller that stays, and an abort that raises."""

    def time_remaining(self) -> float:
        return 5.0

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise SystemExit(f"the profiled request failed: {code.name} {details[:200]}")


def _profile(config: ServerConfig, users: list[int], requests: int, gap_ms: float) -> None:
    """Stage times and CPU of the ``Rank`` handler called directly, sequentially, on the
    benchmark's own thread: no gRPC and no client in the process (a client sharing the
    server's GIL lengthens every stage it waits in); the front end's cost is the load's server
    CPU per request less this handler's."""
    server = RankingServer(config).start()
    service, call = server.service, _InProcessCall()
    batch = [rank_request(user, K) for user in users]
    for request in batch[:50]:  # warm: first calls of ONNX Runtime and FAISS
        service.Rank(request, call)
    service.profile = StageProfile()
    cpu, wall = time.thread_time(), time.perf_counter()
    for n in range(requests):
        service.Rank(batch[n % len(batch)], call)
    cpu_ms = (time.thread_time() - cpu) * 1e3 / requests
    wall_ms = (time.perf_counter() - wall) * 1e3 / requests
    stages = service.profile.mean_ms()
    service.profile = None
    # the same calls with the core idle before each (idle_gap.py's measurement, on this handler)
    cycled = itertools.cycle(batch)
    paced = (
        cpu_per_call(lambda: service.Rank(next(cycled), call), "sleep", gap_ms / 1e3, requests // 2)
        if gap_ms > 0
        else None
    )
    server.stop(1)
    handler = stages.pop("handler total")
    print(f"\nthe handler called in process, sequential ({requests} requests), mean ms:")
    for stage, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<24} {ms:7.3f}")
    print(f"  {'handler total':<24} {handler:7.3f}   (wall {wall_ms:.3f}, CPU of this thread {cpu_ms:.3f})")
    if paced is not None:
        print(f"  with {gap_ms:g} ms asleep before each call: CPU of this thread {paced:.3f} ms a call")


def _wait_serving(address: str, timeout_s: float = 300.0) -> None:
    """Until the server at ``address`` reports SERVING (its models and items are loaded)."""
    deadline = time.monotonic() + timeout_s
    with RankingClient(address) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                if client.health(timeout_s=2.0) == "SERVING":
                    return
            time.sleep(0.5)
    raise SystemExit(f"the server at {address} did not report SERVING within {timeout_s:.0f} s")


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and all its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])  # after "pid (comm)": state, ppid, ...; utime/stime 12, 13
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(times.get(pid, 0.0) for pid in tree)


def _steal_seconds() -> float:
    """CPU time the hypervisor gave other guests instead of this machine, all cores, since boot
    (``/proc/stat``): a pinned server's stall with steal beside it was not the server's."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")  # cpu user nice system idle iowait irq softirq steal


@contextlib.contextmanager
def _pinned_to(cpus: str | None) -> Iterator[None]:
    """This process on ``cpus`` (a comma list; all of its own when None) for the block."""
    own = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def _pinned(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def _drive(args: argparse.Namespace, address: str, users: list[int], qps: float) -> dict[str, float]:
    """One rate of open-loop load from ``load_client.py``, a lean process of its own (pinned to
    ``--client-cpus``): its latencies, ok and error counts."""
    command = [
        *_pinned(args.client_cpus),
        *(sys.executable, str(Path(__file__).with_name("load_client.py"))),
        *("--address", address, "--k", str(K), "--qps", str(qps), "--seconds", str(args.seconds)),
        *("--users", *map(str, users)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"the load client failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load(args: argparse.Namespace, config: ServerConfig, users: list[int]) -> None:
    """``rankforge serve --processes P`` in its own process(es), driven open-loop at each
    ``--qps``; the server's own CPU time per request is measured from ``/proc`` over the load
    window, so the cost is known whatever shares the cores (``--server-cpus``/``--client-cpus``
    pin them; the harness itself waits on the client's cores). A row with errors is a saturated
    server: its CPU per request is not a cost.

    The harness's own objects are frozen out of its garbage collector first: after the export
    (torch, its ONNX exporter) it holds ~640k objects, a full collection of them takes 0.35-0.45
    s, and one that fell inside a load window starved the client on the same core (p99 0.2-1 s
    in runs whose server showed no stall; 3.5 ms once frozen)."""
    gc.collect()
    gc.freeze()
    with _pinned_to(args.client_cpus):
        _load_each(args, config, users)


def _load_each(args: argparse.Namespace, config: ServerConfig, users: list[int]) -> None:
    pins = f"server cpus {args.server_cpus or 'any'}, client cpus {args.client_cpus or 'any'}"
    print(f"\nopen loop for {args.seconds:.0f} s per rate, retrieve + rank {K * FACTOR}, {pins}:")
    print(
        f"  {'processes':>9} {'QPS':>5} {'ok':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'server CPU ms/req':>17} {'QPS per core':>12} {'steal ms':>8}"
    )
    for processes in args.processes:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [
            *(sys.executable, "-m", "rankforge.cli", "serve"),
            *("--processes", str(processes), "--port", str(port)),
            *("--retrieval", config.retrieval, "--ranker", config.ranker),
            *("--redis-url", config.redis_url, "--feature-prefix", config.feature_prefix),
            *("--refresh-interval-s", "0", "--workers", "16"),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        served = subprocess.Popen(
            [*_pinned(args.server_cpus), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert served.stdout is not None
            served.stdout.readline()
            _wait_serving(f"127.0.0.1:{port}")
            time.sleep(2 * processes)  # with SO_REUSEPORT, every worker: each serves once loaded
            for qps in args.qps:
                cpu_before, steal_before = _tree_cpu_seconds(served.pid), _steal_seconds()
                got = _drive(args, f"127.0.0.1:{port}", users, qps)
                steal_ms = (_steal_seconds() - steal_before) * 1e3
                answered = max(1, got["ok"] + got["errors"])
                cpu_ms = (_tree_cpu_seconds(served.pid) - cpu_before) * 1e3 / answered
                print(
                    f"  {processes:>9} {qps:>5.0f} {got['ok']:>6} {got['errors']:>6} {got['p50']:>8.2f} "
                    f"{got['p99']:>8.2f} {got['p999']:>9.2f} {cpu_ms:>17.2f} {1e3 / cpu_ms:>12.0f} "
                    f"{steal_ms:>8.0f}",
                    flush=True,
                )
                time.sleep(2)  # the queue of a saturated rate drains before the next
        finally:
            served.terminate()
            served.wait(timeout=30)


def main() -> int:
    args = _arguments()
    torch.set_num_threads(1)
    redis_url = Settings.from_env().redis_url
    ensure_redis(redis_url)
    data = prepare(
        DataConfig(
            synthetic=SyntheticConfig(n_users=args.users, n_items=args.items, min_events=5, max_events=20)
        )
    )
    layout = KeyLayout(f"rfprof-{uuid.uuid4().hex[:8]}")
    client = connect(redis_url, timeout_s=5.0)
    users = [int(u) for u in data.mapping.users["user_id"]]
    with tempfile.TemporaryDirectory(prefix="rankforge-profile-") as root:
        started = time.perf_counter()
        retrieval, ranker = _bundles(args, data, root)
        FeatureWriter(client, layout, ttl_s=1800).write(data)
        print(f"setup {time.perf_counter() - started:.0f} s: {data.n_users} users, {data.n_items} items")
        config = ServerConfig(
            retrieval=retrieval,
            ranker=ranker,
            redis_url=redis_url,
            feature_prefix=layout.prefix,
            port=0,
            refresh_interval_s=0,
            limits=ServiceLimits(retrieve_factor=FACTOR),
        )
        try:
            if not args.skip_profile:
                with _pinned_to(args.server_cpus):
                    _profile(config, users, args.profile_requests, args.profile_gap_ms)
            _load(args, config, users)
        finally:
            keys = list(client.scan_iter(f"{layout.prefix}:*", count=5000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start : start + 5000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

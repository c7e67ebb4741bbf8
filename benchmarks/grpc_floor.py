"""What the gRPC front end alone costs per Rank call: the server CPU of a handler that does no work.

    .venv/bin/python benchmarks/grpc_floor.py [--seconds 10] [--server-cpus 0 --client-cpus 1]

A server process serves ``rankforge.v1.RankingService/Rank`` with a handler that parses the real
request (the service's own safe deserializer) and answers a prebuilt 20-item ``RankResponse`` (the
size of a real answer), in each front end Python's grpc offers:

* ``sync``: ``grpc.server`` with a thread pool (what ``rankforge serve`` runs), 8 workers;
* ``sync-1``: the same with one worker (no hand-off between pool threads to contend for);
* ``aio``: ``grpc.aio.server``, the handler a coroutine on the event loop;
* ``aio-pool``: ``grpc.aio.server`` with the plain handler run on a thread pool (8 workers), what
  ``rankforge serve`` runs since issue #34 (a call holds a thread only while its handler runs).

A sequential client in another process (pinned to ``--client-cpus``) sends requests for
``--seconds``; the server's CPU time over that window (``/proc``) per request is the floor every
Rank request pays before any ranking work, and ``1000 / floor`` the calls one core could answer.
Modes alternate over ``--rounds`` rounds (the machine's noise shows as spread, not as a bias).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np

from rankforge.benchmarks.machine import machine
from rankforge.benchmarks.serve_profile import _pinned, _tree_cpu_seconds
from rankforge.serving.client import rank_request
from rankforge.serving.proto import SERVICE_NAME, ranking_pb2, ranking_pb2_grpc
from rankforge.serving.ranking_service import safe_deserializer

MODES = ("sync", "sync-1", "aio", "aio-pool")
ANSWER = ranking_pb2.RankResponse(
    items=[
        ranking_pb2.ScoredItem(item_id=1000 + i, score=0.5 - i / 100, retrieval_score=0.25, item_key="")
        for i in range(20)
    ],
    versions=ranking_pb2.ModelVersions(retrieval="1", ranker="1", features="v1"),
    request_id="0" * 32,
    n_ranked=200,
)


def _handlers(rank) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Rank": grpc.unary_unary_rpc_method_handler(
                rank,
                request_deserializer=safe_deserializer(ranking_pb2.RankRequest),
                response_serializer=ranking_pb2.RankResponse.SerializeToString,
            )
        },
    )


def serve(mode: str, port: int) -> None:
    """The server process's body: serve until killed."""
    address = f"127.0.0.1:{port}"
    if mode in ("aio", "aio-pool"):

        async def rank(request, context):
            return ANSWER

        async def main() -> None:
            if mode == "aio":
                server = grpc.aio.server()
                server.add_generic_rpc_handlers((_handlers(rank),))
            else:
                server = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(max_workers=8))
                server.add_generic_rpc_handlers((_handlers(lambda request, context: ANSWER),))
            server.add_insecure_port(address)
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(main())
        return
    workers = 1 if mode == "sync-1" else 8
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((_handlers(lambda request, context: ANSWER),))
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def measure(mode: str, seconds: float, server_cpus: str | None, client_cpus: str | None) -> tuple[int, float]:
    """(requests answered, server CPU ms per request) for one mode."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = subprocess.Popen(
        [*_pinned(server_cpus), sys.executable, __file__, "--serve", mode, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    own = os.sched_getaffinity(0)
    try:
        assert served.stdout is not None
        served.stdout.readline()
        if client_cpus:
            os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            rank = ranking_pb2_grpc.RankingServiceStub(channel).Rank
            request = rank_request(17, 20)
            for _ in range(200):  # warm both sides
                rank(request, timeout=5.0)
            before, n = _tree_cpu_seconds(served.pid), 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                rank(request, timeout=5.0)
                n += 1
            cpu_ms = (_tree_cpu_seconds(served.pid) - before) * 1e3 / n
        return n, cpu_ms
    finally:
        os.sched_setaffinity(0, own)
        served.kill()
        served.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    print(
        f"{dt.date.today()}, {machine()}, grpcio {grpc.__version__}, sequential client "
        f"{args.seconds:.0f} s per run, server cpus {args.server_cpus}, client cpus {args.client_cpus}"
    )
    results: dict[str, list[float]] = {mode: [] for mode in args.modes}
    print(f"  {'round':>5} {'front end':>9} {'requests':>8} {'server CPU ms/req':>17} {'calls/core-s':>12}")
    for r in range(args.rounds):
        for mode in args.modes:
            n, cpu_ms = measure(mode, args.seconds, args.server_cpus, args.client_cpus)
            results[mode].append(cpu_ms)
            print(f"  {r + 1:>5} {mode:>9} {n:>8} {cpu_ms:>17.3f} {1e3 / cpu_ms:>12.0f}", flush=True)
    for mode, values in results.items():
        print(f"  median {mode:>9}: {float(np.median(values)):.3f} ms/req")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

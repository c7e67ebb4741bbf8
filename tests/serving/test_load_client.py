"""The benchmarks' open-loop load client, against a live server: every scheduled request is
counted once, answered ones as latencies and refused ones as errors, and the output is the JSON
``serve_profile.py`` reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rankforge.features.pipeline import PreparedData
from rankforge.serving.server import RankingServer

CLIENT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_client.py"


def _run(address: str, users: list[int], qps: float, seconds: float) -> dict[str, float]:
    command = [sys.executable, str(CLIENT), "--address", address, "--qps", str(qps)]
    command += ["--seconds", str(seconds), "--k", "5", "--users", *map(str, users)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_scheduled_request_is_answered_and_timed(
    server: RankingServer, serving_data: PreparedData
) -> None:
    users = [int(u) for u in serving_data.mapping.users["user_id"][:5]]
    got = _run(server.address, users, qps=40, seconds=1.0)
    assert (got["ok"], got["errors"]) == (40, 0)
    assert 0 < got["p50"] <= got["p99"] <= got["p999"] < 5000


def test_refused_requests_are_errors_not_latencies(server: RankingServer) -> None:
    got = _run(server.address, [10**12], qps=20, seconds=1.0)  # a user with no features: NOT_FOUND
    assert (got["ok"], got["errors"]) == (0, 20)

"""``rankforge query`` / ``materialize`` through the real entry point."""

from __future__ import annotations

import json

import pytest

from rankforge.cli import main

pytestmark = pytest.mark.redis


def test_query_prints_the_ranking(server, user_id, capsys) -> None:
    assert main(["query", "--address", server.address, "--user", str(user_id), "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert server.watcher.models.ranker.version in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]) == 3


def test_query_reports_status_errors(server, capsys) -> None:
    assert main(["query", "--address", server.address, "--user", "987654321"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["query", "--address", server.address, "--user", "1", "--context", "oops"]) == 2
    assert "NAME=NUMBER" in capsys.readouterr().err


def test_auction_prints_the_ads_by_ecpm_and_bad_bids_exit_2(
    make_server, bundles, feature_version, user_id, capsys
) -> None:
    server = make_server(ad_ranker=str(bundles.ranker))
    args = ["auction", "--address", server.address, "--user", str(user_id)]
    assert main([*args, "--bids", "5:1.0,6:2.5,7:0.4"]) == 0
    out = capsys.readouterr().out
    assert "rule gsp" in out and len([ln for ln in out.splitlines() if ln.strip()[:1] in "123"]) == 3
    assert main([*args, "--bids", "5:1.0,6:-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "INVALID_ARGUMENT" in err and "6: -1.0" in err


def test_materialize_writes_a_new_current_version(redis_url, redis_client, layout, tmp_path, capsys) -> None:
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  synthetic:\n    n_users: 20\n    n_items: 60\n")
    args = ["materialize", "--data-config", str(config), "--redis-url", redis_url]
    assert main([*args, "--feature-prefix", layout.prefix, "--ttl-s", "60"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["users"] == 20 and report["items"] == 60
    assert redis_client.get(layout.current).decode() == report["feature_version"]


def test_materialize_with_redis_down_says_so_in_one_line(closed_port, capsys) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    assert main(["materialize", "--redis-url", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"rankforge materialize: error: Redis at {url} is not answering"
    )


def test_query_without_a_server_hints_at_serve_and_address(closed_port, capsys) -> None:
    address = f"127.0.0.1:{closed_port}"
    assert main(["query", "--address", address, "--user", "1", "--timeout-s", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rankforge query: error: ")
    assert f"is `rankforge serve` running at {address}? see --address" in err[0]


def test_serve_on_a_taken_port_fails_cleanly(bundles, redis_url, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--retrieval", str(bundles.retrieval), "--ranker", str(bundles.ranker)]
        assert main([*args, "--redis-url", redis_url, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"rankforge serve: error: cannot listen on 127.0.0.1:{port}")


def test_serving_commands_explain_their_options(capsys) -> None:
    for command in ("serve", "query", "materialize"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "(default:" in text, command


@pytest.mark.slow
def test_serve_with_several_processes_shares_the_port_and_stops_them_all(
    bundles, redis_url, layout, feature_version, user_id
) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from rankforge.serving.client import RankingClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "rankforge.cli",
        "serve",
        "--processes",
        "2",
        "--port",
        str(port),
        "--retrieval",
        str(bundles.retrieval),
        "--ranker",
        str(bundles.ranker),
        "--redis-url",
        redis_url,
        "--feature-prefix",
        layout.prefix,
        "--refresh-interval-s",
        "0",
    ]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "(2 processes)" in parent.stdout.readline()
        children = lambda: [  # noqa: E731
            int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == parent.pid
        ]
        assert len(children()) >= 1  # the second server process (and spawn's resource tracker)
        with RankingClient(f"127.0.0.1:{port}", timeout_s=10.0) as client:
            client.wait_ready(30)
            deadline = time.monotonic() + 60
            answers = 0
            while answers < 20 and time.monotonic() < deadline:
                try:
                    answers += len(client.rank(user_id, k=3).items) == 3
                except Exception:  # the worker may still be loading its models
                    time.sleep(0.2)
            assert answers == 20
        kids = children()
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        time.sleep(1)
        assert not [k for k in kids if _alive(k)]  # no server process outlives the parent
    finally:
        if parent.poll() is None:
            parent.kill()


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

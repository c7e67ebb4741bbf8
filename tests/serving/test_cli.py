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


def test_materialize_writes_a_new_current_version(redis_url, redis_client, layout, tmp_path, capsys) -> None:
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  synthetic:\n    n_users: 20\n    n_items: 60\n")
    args = ["materialize", "--data-config", str(config), "--redis-url", redis_url]
    assert main([*args, "--feature-prefix", layout.prefix, "--ttl-s", "60"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["users"] == 20 and report["items"] == 60
    assert redis_client.get(layout.current).decode() == report["feature_version"]

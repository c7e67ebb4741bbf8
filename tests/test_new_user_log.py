"""A new user's own click log, end to end, as the README tells them to run it (issue #21).

String member and sku ids, ISO timestamps, a 0/1 ``clicked`` column, an item table with
';'-separated categories and a time split (``tests/click_log.py``). Each test runs the command or
the RPC a user would and checks what they would see: coverage that is never silent, served
answers equal to the evaluated ones, ids named as the caller wrote them, the context map, the
popularity floor, start-up and logs, and ``materialize`` without a data config.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import mlflow
import numpy as np
import polars as pl
import pytest
import redis

from rankforge.cli import main
from rankforge.serving.client import RankingClient
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.ranking_service import ServiceLimits
from rankforge.serving.server import RankingServer, ServerConfig

from .click_log import TEST_FROM, write_click_log, write_config

pytestmark = pytest.mark.redis


# -- the truth, transcribed from the log with Polars ---------------------------------------------


def _events(folder: Path) -> pl.DataFrame:
    return pl.read_csv(folder / "events.csv").with_columns(
        pl.col("ts").str.to_datetime(time_zone="UTC").dt.epoch("s").alias("t")
    )


def _independent_coverage(folder: Path) -> dict[str, int]:
    """Held-out = at or after the cut; a cold member has no event before it; a member is scored
    by retrieval with at least one click among their held-out events on known skus."""
    events = _events(folder)
    train, test = events.filter(pl.col("t") < TEST_FROM), events.filter(pl.col("t") >= TEST_FROM)
    known_members = set(train["member"])
    catalogue = set(train["sku"]) | set(pl.read_csv(folder / "items.csv")["sku"])
    scored = test.filter(pl.col("member").is_in(known_members) & pl.col("sku").is_in(catalogue))
    cold = test.filter(~pl.col("member").is_in(known_members))
    return {
        "users": test["member"].n_unique(),
        "cold_users": cold["member"].n_unique(),
        "cold_user_events": cold.height,
        "scored_events": scored.height,
        "positive_users": scored.filter(pl.col("clicked") == 1)["member"].n_unique(),
    }


# -- one trained deployment for the module --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The log, a registered two-tower and ranker (RANKFORGE_HOME private to the module), and
    what `rankforge train` printed for the two-tower."""
    folder = write_click_log(tmp_path_factory.mktemp("clicks"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANKFORGE_HOME", str(folder / "home"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        outputs = {}
        for model in ("two_tower", "ranker"):
            capture = folder / f"{model}.out"
            with capture.open("w") as out, pytest.MonkeyPatch.context() as streams:
                streams.setattr(sys, "stdout", out)
                assert main(["train", str(write_config(folder, model))]) == 0
            outputs[model] = capture.read_text()
        yield {"folder": folder, "outputs": outputs}


@pytest.fixture
def layout(redis_url: str) -> Iterator[KeyLayout]:
    layout = KeyLayout(f"rfuser-{uuid.uuid4().hex[:10]}")
    yield layout
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{layout.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def _materialize(trained: dict, redis_url: str, layout: KeyLayout, *extra: str) -> dict:
    args = ["materialize", "--redis-url", redis_url, "--feature-prefix", layout.prefix, *extra]
    args += ["--retrieval", "models:/clicks-two_tower@champion", "--ranker", "models:/clicks-ranker@champion"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANKFORGE_HOME", str(trained["folder"] / "home"))
        capture = trained["folder"] / "materialize.out"
        with capture.open("w") as out:
            env.setattr(sys, "stdout", out)
            assert main(args) == 0
        return json.loads(capture.read_text().strip().splitlines()[-1])


def _server(trained: dict, redis_url: str, layout: KeyLayout, **limits: int) -> RankingServer:
    runs = trained["folder"] / "runs"
    return RankingServer(
        ServerConfig(
            retrieval=str(runs / "two_tower" / "bundle"),
            ranker=str(runs / "ranker" / "bundle"),
            redis_url=redis_url,
            feature_prefix=layout.prefix,
            port=0,
            refresh_interval_s=0,
            limits=ServiceLimits(**limits),
        )
    ).start()


# -- 1. coverage is never silent ---------------------------------------------------------------


def test_train_reports_what_the_test_metrics_scored_and_what_they_dropped(trained: dict) -> None:
    truth = _independent_coverage(trained["folder"])
    assert truth["cold_users"] > 0  # the log is built so that the split leaves cold members
    out = trained["outputs"]["two_tower"]
    assert (
        f"test coverage: {truth['positive_users']} of {truth['users']} users scored (with a held-out "
        f"positive); not scored: {truth['cold_users']} cold users ({truth['cold_user_events']} events)"
    ) in out
    ranker = trained["outputs"]["ranker"]
    assert f"test coverage: {truth['scored_events']} of " in ranker
    assert f"{truth['cold_users']} cold users ({truth['cold_user_events']} events)" in ranker
    run_id = out.split("run ")[1].split(":")[0]
    mlflow.set_tracking_uri(f"sqlite:///{trained['folder'] / 'home' / 'mlflow.db'}")
    logged = mlflow.get_run(run_id).data.metrics
    assert logged["test_coverage_cold_users"] == truth["cold_users"]
    assert logged["test_coverage_positive_users"] == truth["positive_users"]


def test_evaluate_reports_coverage_in_its_output_and_evaluation_json(
    trained: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    truth = _independent_coverage(trained["folder"])
    monkeypatch.setenv("RANKFORGE_HOME", str(trained["folder"] / "home"))
    config = trained["folder"] / "two_tower.toml"
    assert (
        main(["evaluate", "models:/clicks-two_tower/1", "--data-config", str(config), "--resamples", "20"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"coverage: {truth['positive_users']} of {truth['users']} held-out users scored" in out
    assert f"{truth['cold_users']} users not in the data's training part" in out
    run_id = out.strip().splitlines()[-1].split("run ")[1].split(";")[0]
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation.json")
    assert report["dropped_cold_users"] == truth["cold_users"]
    assert report["held_out_users"] == truth["users"] and report["evaluated_users"] == truth["positive_users"]


# -- 1 and 8. materialize writes every member and sku, with no data config -------------------------


def test_materialize_without_a_data_config_serves_every_member_of_the_log(
    trained: dict, redis_url: str, layout: KeyLayout
) -> None:
    events = _events(trained["folder"])
    report = _materialize(trained, redis_url, layout)  # the data config comes from the champions
    skus = set(events["sku"]) | set(pl.read_csv(trained["folder"] / "items.csv")["sku"])
    assert report["users"] == events["member"].n_unique() and report["items"] == len(skus)
    cold = events.group_by("member").agg(pl.col("t").min()).filter(pl.col("t") >= TEST_FROM)["member"]
    server = _server(trained, redis_url, layout)
    try:
        with RankingClient(server.address) as client:
            for member in cold.to_list()[:3]:  # joined after the cut: served, not NOT_FOUND
                answer = client.rank(member, k=5)
                assert len(answer.items) == 5
                clicked = set(events.filter(pl.col("member") == member)["sku"])
                assert not {i.item_key for i in answer.items} & clicked
    finally:
        server.stop(0)


def test_materialize_without_a_data_config_or_models_says_what_to_pass(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RANKFORGE_HOME", str(tmp_path / "empty-home"))
    (tmp_path / "empty-home").mkdir()
    assert main(["materialize", "--redis-url", redis_url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pass --data-config" in err


# -- 2. served = evaluated -----------------------------------------------------------------------


def test_the_service_answers_what_was_evaluated(trained: dict, redis_url: str, layout: KeyLayout) -> None:
    """Offline Recall@10 of the retrieval bundle on the held-out members equals the recall of
    the live service's answers for them (exact index, retrieve exactly k, the training part
    materialised as evaluated), and no answer holds an item the member already interacted with."""
    from rankforge.bundles.bundle import load_bundle
    from rankforge.evaluation.metrics import per_user_retrieval_metrics
    from rankforge.features.pipeline import prepare
    from rankforge.pipelines.bundle_scoring import score_retrieval
    from rankforge.training.config import load_config

    folder = trained["folder"]
    data = prepare(load_config(folder / "two_tower.toml").data)
    scored = score_retrieval(load_bundle(folder / "runs" / "two_tower" / "bundle"), data)
    per_user = per_user_retrieval_metrics(scored.scores, scored.relevant, scored.exclude, ks=(10,))
    offline = dict(zip(scored.users[per_user["user"]].tolist(), per_user["recall@10"].tolist(), strict=True))

    _materialize(trained, redis_url, layout, "--as-evaluated")
    events = _events(folder)
    train, test = events.filter(pl.col("t") < TEST_FROM), events.filter(pl.col("t") >= TEST_FROM)
    key_of = dict(zip(data.mapping.users["user_id"], data.mapping.users["user_key"], strict=True))
    server = _server(trained, redis_url, layout, retrieve_factor=1)
    served = {}
    try:
        with RankingClient(server.address) as client:
            for user_id in offline:
                member = key_of[user_id]
                answer = {i.item_key for i in client.rank(member, k=10).items}
                positives = set(test.filter((pl.col("member") == member) & (pl.col("clicked") == 1))["sku"])
                served[user_id] = len(answer & positives) / len(positives)
                assert not answer & set(train.filter(pl.col("member") == member)["sku"])
    finally:
        server.stop(0)
    assert len(served) > 10
    assert served == pytest.approx(offline, abs=1e-9)


def test_seen_items_are_served_when_a_request_asks(trained: dict, redis_url: str, layout: KeyLayout) -> None:
    _materialize(trained, redis_url, layout)
    events = _events(trained["folder"])
    member = events.group_by("member").len().sort("len", descending=True)["member"][0]
    clicked = set(events.filter(pl.col("member") == member)["sku"])
    server = _server(trained, redis_url, layout)
    try:
        with RankingClient(server.address) as client:
            everything = client.rank(member, k=200, exclude_seen=False)
            default = client.rank(member, k=200)
    finally:
        server.stop(0)
    assert {i.item_key for i in everything.items} & clicked
    assert not {i.item_key for i in default.items} & clicked


# -- 3 and 4. the caller's ids; the context map ---------------------------------------------------


def test_messages_name_the_callers_ids_and_blank_ids_are_refused(
    trained: dict, redis_url: str, layout: KeyLayout, capsys: pytest.CaptureFixture
) -> None:
    _materialize(trained, redis_url, layout)
    server = _server(trained, redis_url, layout)
    try:
        with RankingClient(server.address) as client:
            for call, code, message in [
                (lambda: client.rank("m_nobody", k=3), "NOT_FOUND", "user 'm_nobody' has no features"),
                (lambda: client.rank("   ", k=3), "INVALID_ARGUMENT", "the user key is empty or blank"),
                (
                    lambda: client.rank("m_1", k=3, candidates=["sku-1", "sku-nope"]),
                    "NOT_FOUND",
                    "1 candidate item(s) have no features",
                ),
            ]:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code().name == code and message in err.value.details()
            assert "'sku-nope'" in err.value.details()
        # the CLI: "" is refused before any request; "7" is a string id like any other
        assert main(["query", "--address", server.address, "--user", ""]) == 2
        assert "--user is empty" in capsys.readouterr().err
        assert main(["query", "--address", server.address, "--user", "7"]) == 2
        assert "NOT_FOUND: user '7' has no features" in capsys.readouterr().err
        assert (
            main(["query", "--address", server.address, "--user", "m_1", "--context", "user_log_events=1000"])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert (
            err.count("\n") == 0 and "INVALID_ARGUMENT: unknown context feature(s) 'user_log_events'" in err
        )
        assert "the model declares no context feature" in err
    finally:
        server.stop(0)


# -- 5. the popularity floor ----------------------------------------------------------------------


def test_a_retrieval_run_that_does_not_beat_popularity_says_so(
    trained: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog
) -> None:
    monkeypatch.setenv("RANKFORGE_HOME", str(trained["folder"] / "home"))
    # an untrained two-tower (a learning rate of ~0): it cannot beat the most popular items
    frozen = write_config(
        trained["folder"],
        "two_tower",
        name="frozen",
        epochs=1,
        optimizer={"dense_lr": 1e-12, "sparse_lr": 1e-12},
    )
    assert main(["train", str(frozen)]) == 0
    captured = capsys.readouterr()
    assert "popularity floor (most popular unseen items): test_ndcg@20=" in captured.out
    assert "NOT beaten on recall@20" in captured.out
    assert "does not beat the popularity floor on test recall@20" in caplog.text  # a WARNING
    assert "popularity floor" in trained["outputs"]["two_tower"]  # every retrieval run shows it


# -- 6 and 7. start-up, logs, wording -----------------------------------------------------------------


def test_commands_that_do_not_train_or_serve_import_no_heavy_library() -> None:
    """`--help` and a query load neither torch, TorchRec, Polars nor MLflow (the start-up time
    itself is measured in benchmarks/cli_startup.py)."""
    probe = (
        "import sys\n"
        "from rankforge.cli import main\n"
        "for args in (['--help'], ['query', '--help'], ['query', '--address', '127.0.0.1:1', '--user', '1',"
        " '--timeout-s', '0.2']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'torchrec', 'polars', 'mlflow', 'onnxruntime', 'numpy')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_train_logs_one_line_per_epoch_and_no_third_party_noise(trained: dict, tmp_path: Path) -> None:
    config = write_config(trained["folder"], "two_tower", name="logged", epochs=3)
    env = {"RANKFORGE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "rankforge.cli", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    epoch_lines = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3 and len(done.stderr) < 2000, done.stderr[-2000:]
    assert "WARNING:root" not in done.stderr and "it/s" not in done.stderr
    assert "\ntest_hitrate@10=" in done.stdout and "recall@20=" not in done.stdout.replace(
        "test_recall@20=", ""
    )


def test_an_ids_only_model_refuses_declared_features(trained: dict, capsys: pytest.CaptureFixture) -> None:
    config = write_config(trained["folder"], "mf", name="mf_with_features", item_table=True)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "model kind 'mf' reads ids only, not the declared feature(s) ['categories']" in err
    )


def test_bad_rows_are_named_by_their_line_in_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_click_log(tmp_path / "bad")
    lines = (folder / "events.csv").read_text().splitlines()
    lines[41] = lines[41].rsplit(",", 1)[0] + ",maybe"  # line 42 of the file
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    assert main(["train", str(write_config(folder, "two_tower"))]) == 2
    err = capsys.readouterr().err
    assert "{'line': 42, 'clicked': 'maybe'}" in err
    assert (folder / "events.csv").read_text().splitlines()[42 - 1].endswith(",maybe")


def test_selected_epoch_is_an_integer_in_the_summary(
    trained: dict, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("RANKFORGE_HOME", str(trained["folder"] / "home"))
    config = write_config(trained["folder"], "ranker", name="selected")
    text = config.read_text().replace("history_len = 10", "history_len = 10\nvalidation_fraction = 0.1")
    config.write_text(text)
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "selected epoch " in out and "best_epoch=" not in out
    # each rank's share of the embedding tables, said before the epochs
    share = printed.err.split("embedding tables on 1 process(es): rank 0 ")[1].split(" MiB")[0]
    assert float(share) > 0
    assert out.split("selected epoch ")[1].split(" ")[0].isdigit()
    assert np.isfinite(float(out.split("validation auc ")[1].split(")")[0]))

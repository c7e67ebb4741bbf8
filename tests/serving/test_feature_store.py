"""The Redis feature store on the real server: layout, versions, pointer switch, TTLs."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.aggregates import ITEM_DENSE, USER_DENSE
from rankforge.serving.feature_layout import KeyLayout, pack, unpack
from rankforge.serving.feature_reader import (
    FeatureReader,
    FeatureStoreCorrupt,
    FeatureStoreEmpty,
    FeatureStoreUnavailable,
    connect,
)
from rankforge.serving.feature_writer import FeatureWriter


def test_record_round_trip_and_corruption() -> None:
    record = unpack(pack(np.array([1.5, -2.0]), np.array([7, 3, 9])))
    assert record.dense.dtype == np.float32 and record.dense.tolist() == [1.5, -2.0]
    assert record.ids.tolist() == [7, 3, 9]
    with pytest.raises(DataError, match="does not decode"):
        unpack(pack(np.array([1.0]), np.array([1]))[:-3])


@pytest.mark.parametrize("bad", ["a:b", "has space", "x" * 65])
def test_versions_and_prefixes_cannot_alias_keys(bad: str, redis_client, serving_data) -> None:
    with pytest.raises(DataError, match="bad feature-store version"):
        FeatureWriter(redis_client, KeyLayout("rftest-unused")).write(serving_data, version=bad)
    with pytest.raises(DataError, match="bad feature-store prefix"):
        KeyLayout(bad if ":" not in bad else "a::b")


@pytest.mark.redis
def test_write_then_read_matches_the_feature_tables(redis_client, layout, serving_data) -> None:
    d = serving_data
    writer = FeatureWriter(redis_client, layout, ttl_s=120, batch_size=16, block_items=30)
    report = writer.write(d, version="v-one")
    assert (report.version, report.n_users, report.n_items) == ("v-one", d.n_users, d.n_items)
    assert redis_client.get(layout.current) == b"v-one"
    # the current version never expires under a server (its TTL ran out while the pointer, with
    # none, still named it: every Rank answered NOT_FOUND with health SERVING)
    for key in (layout.user("v-one", 1), layout.items("v-one", 0), layout.meta("v-one"), layout.current):
        assert redis_client.ttl(key) == -1
    assert list(redis_client.scan_iter(layout.writing("*"))) == []  # the write is no longer announced

    users = d.user_features.join(d.mapping.users, on="user_idx")
    row = users.filter(pl.col("history").list.len() > 1).row(0, named=True)
    item_ids = [int(i) for i in d.item_features["item_id"].head(5)]
    read = FeatureReader(redis_client, layout).read(row["user_id"], timeout_s=1.0)

    assert read.version == "v-one" and read.meta.user_dense == list(USER_DENSE)
    assert read.meta.item_blocks == -(-d.n_items // 30)  # 80 items in blocks of at most 30
    np.testing.assert_allclose(read.user.dense, [row[n] for n in USER_DENSE], rtol=1e-6)
    raw_of = dict(zip(d.mapping.items["item_idx"], d.mapping.items["item_id"], strict=True))
    assert read.user.ids.tolist() == [raw_of[i] for i in row["history"]]
    assert len(read.items) == d.n_items and read.meta.item_lists == ["item_genres"]
    rows = read.items.rows(np.array([*item_ids, 10**9]))
    assert rows[-1] == -1  # an item the version does not hold
    for item_id, r in zip(item_ids, rows[:5], strict=True):
        expected = d.item_features.filter(pl.col("item_id") == item_id).row(0, named=True)
        assert read.items.ids[r] == item_id
        np.testing.assert_allclose(read.items.dense[r], [expected[n] for n in ITEM_DENSE], rtol=1e-6)
        assert read.items.lists[0].row(r).tolist() == list(expected["item_genres"])  # indices


def _read_until(reader: FeatureReader, version: str, timeout_s: float = 10.0) -> list[str]:
    """The versions successive reads answered from, until ``version``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(reader.read(None, 1.0).version)
        if seen[-1] == version:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"the reader never served {version!r}: {seen[-5:]}")


@pytest.mark.redis
def test_reader_follows_the_pointer_once_the_new_version_is_loaded(
    redis_client, layout, serving_data
) -> None:
    """The read that sees the pointer move starts loading the new version and is itself answered,
    whole, from the version held; a later read switches over."""
    writer = FeatureWriter(redis_client, layout, ttl_s=120)
    reader = FeatureReader(redis_client, layout)
    writer.write(serving_data, version="first")
    assert reader.read(None, 1.0).version == "first"
    writer.write(serving_data, version="second")
    seen = _read_until(reader, "second")
    assert seen[0] == "first" and set(seen) == {"first", "second"}
    assert reader.served is not None and reader.served.name == "second"
    with pytest.raises(DataError, match="is live"):
        writer.write(serving_data, version="second")


@pytest.mark.redis
def test_a_version_that_does_not_load_leaves_the_previous_one_served(
    redis_client, layout, serving_data, caplog
) -> None:
    writer = FeatureWriter(redis_client, layout, ttl_s=120)
    reader = FeatureReader(redis_client, layout)
    writer.write(serving_data, version="good")
    assert reader.read(1, 1.0).version == "good"
    writer.write(serving_data, version="broken")
    redis_client.delete(layout.items("broken", 0))  # its item block expired (or was never there)
    with caplog.at_level("ERROR", logger="rankforge.serving.feature_reader"):
        for _ in range(20):
            assert reader.read(1, 1.0).version == "good"
            time.sleep(0.02)
    assert "feature version broken could not be loaded; still serving the previous one" in caplog.text
    assert "lacks item block(s) [0]" in caplog.text
    with pytest.raises(FeatureStoreEmpty, match=r"'broken' lacks item block\(s\) \[0\]"):
        FeatureReader(redis_client, layout).read(1, 1.0)  # a new reader has nothing to fall back on


@pytest.mark.redis
def test_each_version_is_handed_to_on_load_before_it_is_served(redis_client, layout, serving_data) -> None:
    writer = FeatureWriter(redis_client, layout, ttl_s=120)
    loaded: list[int] = []
    refuse = {"second": True}

    def on_load(items) -> None:
        if len(loaded) == 1 and refuse["second"]:
            loaded.append(-1)
            raise RuntimeError("the joins failed")
        loaded.append(len(items))

    reader = FeatureReader(redis_client, layout, on_load=on_load)
    writer.write(serving_data, version="one")
    assert reader.read(None, 1.0).version == "one" and loaded == [len(reader.served.items)]
    writer.write(serving_data, version="two")
    for _ in range(20):  # its load fails in on_load: the held version serves on
        assert reader.read(None, 1.0).version == "one"
        time.sleep(0.02)
    assert loaded[1] == -1
    refuse["second"] = False
    reader.RETRY_S = 0.0  # retry at once
    assert _read_until(reader, "two")[-1] == "two" and len(loaded) == 3


@pytest.mark.redis
def test_a_version_without_item_blocks_asks_for_a_new_materialize(redis_client, layout, serving_data) -> None:
    import json

    FeatureWriter(redis_client, layout, ttl_s=120).write(serving_data, version="old")
    meta = json.loads(redis_client.get(layout.meta("old")))
    del meta["item_blocks"]  # as an earlier rankforge wrote it
    redis_client.set(layout.meta("old"), json.dumps(meta))
    with pytest.raises(FeatureStoreEmpty, match=r"holds no item blocks .*run materialize again"):
        FeatureReader(redis_client, layout).read(1, 1.0)


@pytest.mark.redis
def test_a_replaced_version_expires_and_the_new_one_does_not(redis_client, layout, serving_data) -> None:
    writer = FeatureWriter(redis_client, layout, ttl_s=120, batch_size=16)
    writer.write(serving_data, version="one")
    writer.write(serving_data, version="two")
    assert redis_client.get(layout.current) == b"two"
    old = list(redis_client.scan_iter(f"{layout.prefix}:one:*"))
    assert old and all(0 < redis_client.ttl(k) <= 120 for k in old)
    assert all(redis_client.ttl(k) == -1 for k in redis_client.scan_iter(f"{layout.prefix}:two:*"))


def test_a_killed_write_is_removed_by_the_next_one(redis_client, layout, serving_data) -> None:
    """A materialize SIGKILLed midway (its keys staged, its announcement left, its process gone):
    its keys carry the staging TTL, and the next write deletes them at once."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    writer = FeatureWriter(redis_client, layout, ttl_s=120, staging_ttl_s=3600)
    writer.write(serving_data, version="live")
    gone = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    note = {"host": socket.gethostname(), "pid": gone, "heartbeat": time.time()}
    redis_client.set(layout.writing("killed"), json.dumps(note))
    for uid in range(50):
        redis_client.set(layout.user("killed", uid), b"x", ex=3600)
    # another writer still running (this process) and one silent for too long
    redis_client.set(layout.writing("running"), json.dumps({**note, "pid": os.getpid()}))
    redis_client.set(layout.user("running", 1), b"x", ex=3600)
    redis_client.set(layout.writing("silent"), json.dumps({**note, "host": "elsewhere", "heartbeat": 0}))
    redis_client.set(layout.user("silent", 1), b"x", ex=3600)
    assert 0 < redis_client.ttl(layout.user("killed", 7)) <= 3600
    assert sorted(writer.remove_abandoned()) == ["killed", "silent"]
    assert list(redis_client.scan_iter(f"{layout.prefix}:killed:*")) == []
    assert list(redis_client.scan_iter(f"{layout.prefix}:silent:*")) == []
    assert redis_client.exists(layout.user("running", 1)) and redis_client.exists(layout.writing("running"))
    assert redis_client.get(layout.current) == b"live"  # the live version is never touched
    writer.write(serving_data, version="next")  # a write cleans up first, too
    assert redis_client.exists(layout.user("running", 1))


def test_a_write_that_fails_midway_leaves_nothing(redis_client, layout, serving_data, monkeypatch) -> None:
    from rankforge.serving import feature_writer

    writer = FeatureWriter(redis_client, layout, ttl_s=120, batch_size=7)
    writer.write(serving_data, version="good")
    original = feature_writer.user_records

    def broken(data):  # the user table fails after some records went out
        for n, record in enumerate(original(data)):
            if n == 20:
                raise RuntimeError("disk gone")
            yield record

    monkeypatch.setattr(feature_writer, "user_records", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        writer.write(serving_data, version="bad")
    assert list(redis_client.scan_iter(f"{layout.prefix}:bad:*")) == []
    assert not redis_client.exists(layout.writing("bad"))
    assert redis_client.get(layout.current) == b"good"  # readers never saw the half-written one


@pytest.mark.redis
def test_empty_store_and_dead_store_errors(redis_client, layout, closed_port) -> None:
    with pytest.raises(FeatureStoreEmpty):
        FeatureReader(redis_client, layout).read(1, 1.0)
    dead = FeatureReader(connect(f"redis://127.0.0.1:{closed_port}/0", timeout_s=0.2), layout)
    with pytest.raises(FeatureStoreUnavailable):
        dead.read(1, 1.0)


@pytest.mark.redis
def test_a_key_of_the_wrong_type_is_a_clear_corruption_error(redis_client, layout, serving_data) -> None:
    FeatureWriter(redis_client, layout, ttl_s=120).write(serving_data, version="v")
    redis_client.delete(layout.current)
    redis_client.hset(layout.current, "field", "value")  # a hash where a string pointer belongs
    reader = FeatureReader(redis_client, layout)
    with pytest.raises(FeatureStoreCorrupt, match=r"feature store error on GET .*WRONGTYPE"):
        reader.read(1, 1.0)
    redis_client.delete(layout.current)
    redis_client.set(layout.current, "v")
    assert reader.read(1, 1.0).version == "v"  # the connection was not left half-read


@pytest.mark.redis
def test_a_reply_that_arrived_while_the_thread_waited_for_a_cpu_is_read(
    redis_client, layout, serving_data
) -> None:
    """The budget counts Redis's delay, not the server's: a thread descheduled right after sending
    (a busy host) finds the reply already there and uses it instead of failing UNAVAILABLE."""
    FeatureWriter(redis_client, layout, ttl_s=120).write(serving_data, version="v")
    reader = FeatureReader(redis_client, layout)
    reader.read(1, 1.0)  # load the version: the next read is one round trip
    pool = redis_client.connection_pool
    conn = pool.get_connection()
    send = conn.send_packed_command

    def send_then_lose_the_cpu(*args: object, **kwargs: object) -> None:
        send(*args, **kwargs)
        time.sleep(0.15)  # longer than the whole budget below

    conn.send_packed_command = send_then_lose_the_cpu
    pool.release(conn)
    try:
        assert reader.read(1, 0.05).user is not None
    finally:
        conn.send_packed_command = send


@pytest.mark.redis
def test_a_read_is_one_round_trip_for_the_user_alone(redis_client, layout, serving_data, monkeypatch) -> None:
    """Once a version is held, a request costs one round trip: the pointer and the user's record.
    Items never cost a read."""
    FeatureWriter(redis_client, layout, ttl_s=120).write(serving_data, version="one")
    reader = FeatureReader(redis_client, layout)
    assert reader.warm() is not None
    trips: list[list[tuple]] = []
    round_trip = reader._round_trip

    def counted(commands, deadline):
        trips.append(commands)
        return round_trip(commands, deadline)

    monkeypatch.setattr(reader, "_round_trip", counted)
    for user in (1, 2, 3):
        read = reader.read(user, 1.0)
        assert read.user is not None and len(read.items) == serving_data.n_items
    assert trips == [[("GET", layout.current), ("GET", layout.user("one", u))] for u in (1, 2, 3)]

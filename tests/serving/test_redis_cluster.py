"""The feature store on a real local 3-node Redis Cluster started by the tests (#13 part 5)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from rankforge.errors import ConfigError, DataError
from rankforge.infra.redis_cluster import LocalCluster, start_cluster
from rankforge.serving.client import RankingClient
from rankforge.serving.feature_layout import unpack
from rankforge.serving.feature_reader import FeatureReader, connect
from rankforge.serving.feature_writer import FeatureWriter, item_frame, user_records
from rankforge.serving.item_table import ItemTable

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = start_cluster(3)
    yield started
    started.stop()


def test_features_written_to_a_cluster_spread_over_its_nodes_and_read_back(
    cluster: LocalCluster, layout, serving_data
) -> None:
    client = connect(cluster.url, timeout_s=2.0)
    report = FeatureWriter(client, layout, ttl_s=120, block_items=10).write(serving_data)
    blocks = -(-report.n_items // 10)
    keys_per_node = [redis.Redis(port=p).dbsize() for p in cluster.ports]
    assert sum(keys_per_node) == report.n_users + blocks + 2 and min(keys_per_node) > 0
    users = dict(user_records(serving_data))
    some_user = next(iter(users))
    read = FeatureReader(client, layout).read(some_user, 2.0)
    assert read.version == report.version and read.meta.item_blocks == blocks
    assert read.user is not None and read.user.ids.tolist() == unpack(users[some_user]).ids.tolist()
    expected = ItemTable.from_frame(item_frame(serving_data), read.meta.item_dense, read.meta.item_lists)
    np.testing.assert_array_equal(read.items.ids, expected.ids)
    np.testing.assert_array_equal(read.items.dense, expected.dense)
    assert FeatureReader(client, layout).read(10**9, 2.0).user is None  # an absent key: None


def test_loading_a_version_costs_one_write_per_node(
    cluster: LocalCluster, layout, serving_data, monkeypatch
) -> None:
    """The version's item blocks spread over the nodes are read in one batch per node: one
    socket write to each node, not one per block."""
    client = connect(cluster.url, timeout_s=2.0)
    FeatureWriter(client, layout, ttl_s=120, block_items=5).write(serving_data)  # 16 blocks
    reader = FeatureReader(client, layout)
    reader.read(1, 2.0)  # the cluster client learns its slots and connections
    writes: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        writes.append(self.port)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    assert reader.warm() is not None
    assert len(writes) == 2 + len(cluster.ports)  # the pointer, the meta, then every block
    blocks = writes[2:]
    assert len(blocks) == len(set(blocks)) == len(cluster.ports)


def test_a_server_on_the_cluster_answers_like_one_on_a_single_redis(
    cluster: LocalCluster, make_server, layout, serving_data, feature_version, user_id
) -> None:
    FeatureWriter(connect(cluster.url, timeout_s=2.0), layout, ttl_s=120).write(serving_data, feature_version)
    single = make_server()
    clustered = make_server(redis_url=cluster.url)
    with RankingClient(single.address) as a, RankingClient(clustered.address) as b:
        want, got = a.rank(user_id, k=5), b.rank(user_id, k=5)
    assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
    assert [round(i.score, 5) for i in got.items] == [round(i.score, 5) for i in want.items]


def test_a_cluster_url_that_answers_nowhere_is_a_one_line_error(closed_port) -> None:
    with pytest.raises(
        ConfigError, match=r"Redis Cluster at rediscluster://127\.0\.0\.1:\d+ does not answer"
    ):
        connect(f"rediscluster://127.0.0.1:{closed_port}", timeout_s=0.2)
    with pytest.raises(DataError, match="expected host:port"):
        connect("rediscluster://nonsense", timeout_s=0.2)


def test_a_cluster_node_given_as_a_plain_url_is_one_line(cluster: LocalCluster, tmp_path, capsys) -> None:
    """materialize --redis-url redis://node: every key of another node would answer MOVED."""
    from rankforge.cli import main

    config = tmp_path / "data.yaml"
    config.write_text("data:\n  synthetic:\n    n_users: 20\n    n_items: 60\n")
    url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    assert main(["materialize", "--data-config", str(config), "--redis-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"Redis at {url} is a node of a Redis Cluster: give the cluster as rediscluster://" in err

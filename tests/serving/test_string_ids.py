"""A log with string ids ("u_95", "sku-16"): trained, materialised and served under those ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
import redis
import torch

from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.errors import DataError
from rankforge.features.log_spec import LogSpec, read_log
from rankforge.features.out_of_core import load_prepared, prepare_to_disk
from rankforge.features.pipeline import DataConfig, PreparedData, prepare
from rankforge.features.synthetic import generate_log
from rankforge.serving.client import RankingClient
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.training.config import ModelConfig
from rankforge.training.tasks import build_model

from .conftest import Bundles, expected_ranking, start_server

SPEC = LogSpec(
    user="uid",
    item="sku",
    timestamp="ts",
    label="stars",
    label_rule="threshold",
    label_threshold=4,
    ids="string",
)


def _independent_id(key: str) -> int:
    """The documented raw id of a string id, written out here: 63 bits of an 8-byte BLAKE2b."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedData, Bundles]:
    folder = tmp_path_factory.mktemp("keyed")
    log = generate_log(40, 60, seed=6).interactions.select(
        ("u_" + pl.col("user_id").cast(pl.String)).alias("uid"),
        ("sku-" + pl.col("item_id").cast(pl.String)).alias("sku"),
        pl.col("timestamp").alias("ts"),
        pl.col("rating").alias("stars"),
    )
    log.write_csv(folder / "log.csv")
    data = prepare(DataConfig(source="file", path=folder / "log.csv", log=SPEC))
    torch.manual_seed(0)
    retrieval = build_model(ModelConfig(kind="retrieval", embedding_dim=8, tower_sizes=[8]), data)
    ranker = build_model(
        ModelConfig(kind="ranking", embedding_dim=8, dense_sizes=[8], over_sizes=[8, 1]), data
    )
    build_retrieval_bundle(retrieval, data, str(folder / "retrieval"))
    build_ranker_bundle(ranker, data, str(folder / "ranker"))
    return folder, data, Bundles(folder / "retrieval", folder / "retrieval", folder / "ranker")


def test_string_ids_become_stable_raw_ids_and_keep_their_keys(
    keyed: tuple[Path, PreparedData, Bundles],
) -> None:
    folder, data, _ = keyed
    users = data.mapping.users
    assert users["user_key"].str.starts_with("u_").all()
    assert users["user_id"].to_list() == [_independent_id(k) for k in users["user_key"].to_list()]
    items = data.mapping.items
    assert items["item_id"].to_list() == [_independent_id(k) for k in items["item_key"].to_list()]
    # the same string gets the same id in another data set (retraining, warm starts, A/B)
    other = read_log(folder / "log.csv", SPEC).head(5)
    assert other["user_id"].to_list() == [_independent_id(k) for k in other["user_key"].to_list()]


@pytest.mark.redis
def test_served_under_the_logs_own_ids(
    keyed: tuple[Path, PreparedData, Bundles], redis_client: redis.Redis, redis_url: str, layout: KeyLayout
) -> None:
    _, data, bundles = keyed
    FeatureWriter(redis_client, layout, ttl_s=300).write(data)
    server = start_server(bundles, redis_url, layout)
    key_of = dict(zip(data.mapping.items["item_id"], data.mapping.items["item_key"], strict=True))
    try:
        with RankingClient(server.address) as client:
            user_key = data.mapping.users["user_key"][3]
            reply = client.rank(user_key, k=5)
            factor = server.config.limits.retrieve_factor
            items, logits, _ = expected_ranking(
                data, bundles.retrieval, bundles.ranker, _independent_id(user_key), 5, factor
            )
            assert [i.item_id for i in reply.items] == items
            assert [i.item_key for i in reply.items] == [key_of[i] for i in items]
            np.testing.assert_allclose([i.score for i in reply.items], logits, rtol=1e-4, atol=1e-5)
            candidates = [key_of[i] for i in items[::-1]]
            ranked = client.rank(user_key, k=5, candidates=candidates)
            assert [i.item_key for i in ranked.items] == [key_of[i] for i in items]
            with pytest.raises(grpc.RpcError) as unknown:
                client.rank("u_nobody", k=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as twice:
                client.rank(user_key, k=5, candidates=[candidates[0], candidates[0]])
            assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "duplicate candidate item keys: 'sku-" in twice.value.details()
            # no user key at all (user_id unset, i.e. 0), or an integer id: never read as a user
            for user in (0, 42):
                with pytest.raises(grpc.RpcError) as missing:
                    client.rank(user, k=5)
                assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "trained on string ids: give the user as user_key" in missing.value.details()
    finally:
        server.stop(0)


def test_out_of_core_reads_string_ids_as_prepare_does(
    keyed: tuple[Path, PreparedData, Bundles], tmp_path: Path
) -> None:
    folder, data, _ = keyed
    config = DataConfig(source="file", path=folder / "log.csv", log=SPEC)
    got = load_prepared(prepare_to_disk(config, tmp_path / "p", events_per_bucket=1_000))
    assert got.mapping.users.equals(data.mapping.users) and got.mapping.items.equals(data.mapping.items)


def test_integer_spec_on_string_ids_says_how_to_read_them(tmp_path: Path) -> None:
    pl.DataFrame({"uid": ["u_1"], "sku": ["a"], "ts": [1]}).write_csv(tmp_path / "log.csv")
    with pytest.raises(DataError, match=r"set data\.log\.ids = 'string'"):
        read_log(tmp_path / "log.csv", LogSpec(user="uid", item="sku", timestamp="ts"))


def test_registered_models_take_the_logs_string_ids(
    keyed: tuple[Path, PreparedData, Bundles], rankforge_home: Path
) -> None:
    import mlflow

    from rankforge.bundles.registry import log_and_register
    from rankforge.settings import Settings, configure_mlflow

    _, data, bundles = keyed
    configure_mlflow(Settings.from_env(), "string-ids")
    with mlflow.start_run():
        retrieval = mlflow.pyfunc.load_model(log_and_register(bundles.retrieval, "rf-keyed-r").model_uri)
        ranker = mlflow.pyfunc.load_model(log_and_register(bundles.ranker, "rf-keyed-k").model_uri)
    user_key = data.mapping.users["user_key"][0]
    top = retrieval.predict(pl.DataFrame({"user_id": [user_key], "k": [3]}).to_pandas())
    key_of = dict(zip(data.mapping.items["item_id"], data.mapping.items["item_key"], strict=True))
    assert top["item_key"].tolist() == [key_of[i] for i in top["item_id"]] and len(top) == 3
    dense = {name: [0.5, 0.5, 0.5] for name in data.inputs.dense_features}
    by_key = ranker.predict(
        pl.DataFrame({"user_id": [user_key] * 3, "item_id": top["item_key"].tolist(), **dense}).to_pandas()
    )
    # the same rows by raw id through the evaluation path (the server's ranker feed)
    from rankforge.bundles.bundle import load_bundle
    from rankforge.pipelines.bundle_scoring import ranker_logits

    rows = pl.DataFrame(
        {"user_id": [_independent_id(user_key)] * 3, "item_id": top["item_id"].tolist(), **dense}
    )
    histories = pl.DataFrame(
        {"user_id": [], "history": []}, schema={"user_id": pl.Int64, "history": pl.List(pl.Int64)}
    )
    expected = ranker_logits(load_bundle(bundles.ranker), rows, histories)
    np.testing.assert_allclose(by_key["logit"].to_numpy(), expected, rtol=1e-5)


def test_side_tables_are_keyed_by_the_same_strings(tmp_path: Path) -> None:
    from rankforge.features.feature_spec import Feature, SideTable

    pl.DataFrame({"u": ["a", "a", "b", "b"], "i": ["x", "y", "x", "z"], "ts": [1, 2, 3, 4]}).write_csv(
        tmp_path / "log.csv"
    )
    pl.DataFrame({"i": ["x", "y", "z"], "brand": ["p", "q", "p"]}).write_csv(tmp_path / "items.csv")
    data = prepare(
        DataConfig(
            source="file",
            path=tmp_path / "log.csv",
            log=LogSpec(user="u", item="i", timestamp="ts", ids="string"),
            split="random",
            test_fraction=0.3,
            item_table=SideTable(path=tmp_path / "items.csv", key="i"),
            features=[Feature(name="item_brand", side="item", kind="categorical", column="brand")],
        )
    )
    brand = dict(
        zip(data.vocabularies["item_brand"]["index"], data.vocabularies["item_brand"]["value"], strict=True)
    )
    got = data.item_features.join(data.mapping.items, on=["item_id", "item_idx"]).select(
        "item_key", "item_brand"
    )
    assert {k: brand[b[0]] for k, b in got.iter_rows()} == {"x": "p", "y": "q", "z": "p"}

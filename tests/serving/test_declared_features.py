"""Features declared only in a config reach a served ranking: side tables -> pipeline -> models
-> ONNX inputs -> Redis records -> the Rank RPC, with no code naming them."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import redis
import torch

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import DataConfig, PreparedData, prepare
from rankforge.features.synthetic import generate_log
from rankforge.serving.client import RankingClient
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.server import RankingServer
from rankforge.training.config import ModelConfig
from rankforge.training.tasks import build_model

from .conftest import Bundles, expected_ranking, start_server

CONFIG = """
[data]
source = "file"
path = "log.csv"
split = "leave_last_out"

[data.log]
user = "uid"
item = "sku"
timestamp = "ts"
label = "stars"
label_rule = "threshold"
label_threshold = 4

[data.user_table]
path = "users.csv"
key = "uid"

[data.item_table]
path = "items.parquet"
key = "sku"

[[data.features]]
name = "user_country"
side = "user"
kind = "categorical"
column = "country"

[[data.features]]
name = "user_age"
side = "user"
kind = "numeric"
column = "age"

[[data.features]]
name = "item_tags"
side = "item"
kind = "multi_categorical"
column = "tags"
separator = "|"
max_len = 3

[[data.features]]
name = "item_price"
side = "item"
kind = "numeric"
column = "price"
normalization = "log1p"

[[data.features]]
name = "item_brand"
side = "item"
kind = "categorical"
column = "brand"

[[data.features]]
name = "brand_history"       # the brands of the user's history items, point-in-time
side = "user"
kind = "sequence"
column = "item_brand"

[[data.features]]
name = "hour_of_day"
side = "context"
kind = "numeric"
column = "hour"
min = 0
max = 23
"""


def _write_world(folder: Path) -> Path:
    """A log with other column names and its user / item side tables, as a user would bring."""
    log = generate_log(40, 60, seed=5)
    log.interactions.rename(
        {"user_id": "uid", "item_id": "sku", "rating": "stars", "timestamp": "ts"}
    ).with_columns(
        ((pl.col("ts") // 3600) % 24).alias("hour")  # request-time context
    ).write_csv(folder / "log.csv")
    rng = np.random.default_rng(0)
    users = log.interactions["user_id"].unique().sort()
    pl.DataFrame(
        {
            "uid": users,
            "country": [[None, "de", "fr", "jp"][i] for i in rng.integers(4, size=len(users))],
            "age": rng.integers(18, 70, size=len(users)),
        }
    ).write_csv(folder / "users.csv")
    items = log.items["item_id"]
    tags = [
        "|".join(rng.choice(["new", "sale", "eco", "gift"], size=rng.integers(0, 4), replace=False))
        for _ in items
    ]
    brands = rng.choice(["acme", "globex", "initech"], size=len(items))
    pl.DataFrame(
        {"sku": items, "tags": tags, "price": rng.gamma(2.0, 20.0, size=len(items)), "brand": brands}
    ).write_parquet(folder / "items.parquet")
    path = folder / "job.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, Bundles]:
    folder = tmp_path_factory.mktemp("declared")
    data = prepare(DataConfig.from_file(_write_world(folder)))
    torch.manual_seed(0)
    retrieval = build_model(ModelConfig(kind="retrieval", embedding_dim=8, tower_sizes=[16, 8]), data)
    ranker = build_model(
        ModelConfig(kind="ranking", embedding_dim=8, dense_sizes=[8], over_sizes=[8, 1]), data
    )
    build_retrieval_bundle(retrieval, data, str(folder / "retrieval"))
    build_ranker_bundle(ranker, data, str(folder / "ranker"))
    paths = Bundles(folder / "retrieval", folder / "retrieval", folder / "ranker")
    return data, paths


def test_the_spec_shapes_the_models_and_the_bundles(declared: tuple[PreparedData, Bundles]) -> None:
    data, bundles = declared
    assert data.inputs.user_keys == ["user_id", "user_history", "user_country", "brand_history"]
    assert data.inputs.item_keys == ["item_id", "item_tags", "item_brand"]
    assert data.inputs.dense_features[-2:] == ["item_price", "hour_of_day"]
    assert "user_age" in data.inputs.dense_features
    # vocabularies from the side tables: 3 countries (nulls embed as nothing), 4 tags
    assert data.vocabularies["user_country"]["value"].to_list() == ["de", "fr", "jp"]
    assert data.vocabularies["item_tags"]["value"].to_list() == ["eco", "gift", "new", "sale"]
    assert data.inputs.input("item_tags").num_embeddings == 4 and data.inputs.input("item_tags").max_len == 3
    # log1p of the side table's price, as the ranker's dense input
    items = pl.read_parquet(bundles.ranker.parent / "items.parquet")
    expected = items.join(data.mapping.items, left_on="sku", right_on="item_id").sort("item_idx")
    np.testing.assert_allclose(
        data.item_features["item_price"].to_numpy(), np.log1p(expected["price"].to_numpy()), rtol=1e-6
    )
    ranker = ort.InferenceSession(str(bundles.ranker / "ranker.onnx"), providers=["CPUExecutionProvider"])
    assert {"user_country", "item_tags"} <= {i.name for i in ranker.get_inputs()}
    tower = ort.InferenceSession(
        str(bundles.retrieval / "user_tower.onnx"), providers=["CPUExecutionProvider"]
    )
    assert "user_country" in {i.name for i in tower.get_inputs()}
    manifest = load_bundle(bundles.ranker).manifest
    assert manifest.dense_features == data.inputs.dense_features
    assert set(manifest.vocabularies) == {"user_country", "item_tags", "item_brand", "brand_history"}
    # a sequence: the brands of the user's latest history items, in the brand vocabulary
    brand_of = dict(
        zip(data.item_features["item_idx"], data.item_features["item_brand"].list.first(), strict=True)
    )
    for history, brands in data.user_features.select("history", "brand_history").head(20).iter_rows():
        assert brands == [brand_of[i] for i in history]


@pytest.mark.redis
def test_declared_features_reach_the_served_ranking(
    declared: tuple[PreparedData, Bundles], redis_client: redis.Redis, redis_url: str, layout: KeyLayout
) -> None:
    data, bundles = declared
    FeatureWriter(redis_client, layout, ttl_s=300).write(data)
    server = start_server(bundles, redis_url, layout)
    try:
        with RankingClient(server.address) as client:
            (hour,) = data.inputs.context  # served raw, normalised by the server as in training
            at_one = {"hour_of_day": hour.normalise(13)}
            for user_id in data.mapping.users["user_id"].head(5).to_list():
                reply = client.rank(user_id, k=5, context={"hour_of_day": 13.0})
                factor = server.config.limits.retrieve_factor
                items, logits, _ = expected_ranking(
                    data, bundles.retrieval, bundles.ranker, user_id, 5, factor, context=at_one
                )
                assert [i.item_id for i in reply.items] == items
                np.testing.assert_allclose([i.score for i in reply.items], logits, rtol=1e-4, atol=1e-5)
            # the features matter: the same ranking computed without them scores differently
            blank = data.user_features.with_columns(pl.lit([], dtype=pl.List(pl.Int64)).alias("user_country"))
            without = type(data)(**{**data.__dict__, "user_features": blank})
            _, blank_logits, _ = expected_ranking(
                without, bundles.retrieval, bundles.ranker, user_id, 5, factor, context=at_one
            )
            assert not np.allclose(blank_logits, logits, atol=1e-5)
            # the request context is required, by its declared name, and moves the scores
            with pytest.raises(grpc.RpcError) as missing:
                client.rank(user_id, k=5)
            assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "needs request context 'hour_of_day'" in missing.value.details()
            night = client.rank(user_id, k=5, candidates=items, context={"hour_of_day": 2.0})
            assert {i.item_id: i.score for i in night.items} != {i.item_id: i.score for i in reply.items}
            # outside its declared range [0, 23]: refused, not silently reordering the ranking
            for value, problem in ((1e6, "must be <= 23"), (-1.0, "must be >= 0")):
                with pytest.raises(grpc.RpcError) as outside:
                    client.rank(user_id, k=5, context={"hour_of_day": value})
                assert outside.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert f"context 'hour_of_day' {problem}" in outside.value.details()
    finally:
        server.stop(0)


def test_spec_errors_name_the_problem(tmp_path: Path) -> None:
    path = _write_world(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('column = "country"', 'column = "nation"'))
    with pytest.raises(DataError, match=r"declared feature column\(s\) not found: user_country: 'nation'"):
        prepare(DataConfig.from_file(path))
    path.write_text(text.replace('name = "user_age"', 'name = "user_id"'))
    with pytest.raises(ConfigError, match="feature name 'user_id' is built in"):
        DataConfig.from_file(path)
    path.write_text(text.replace('column = "item_brand"', 'column = "item_tags"'))
    with pytest.raises(
        ConfigError, match="sequence column 'item_tags' must name a declared categorical item"
    ):
        DataConfig.from_file(path)
    path.write_text(text.replace('name = "user_age"', 'name = "user_country"'))
    with pytest.raises(ConfigError, match="feature 'user_country' is declared twice"):
        DataConfig.from_file(path)
    path.write_text(text)
    pl.read_csv(tmp_path / "users.csv").with_columns(pl.col("age").cast(pl.String) + "y").write_csv(
        tmp_path / "users.csv"
    )
    with pytest.raises(DataError, match="numeric feature 'user_age' has non-numeric values"):
        prepare(DataConfig.from_file(path))


def test_point_in_time_sequences_match_the_served_ones(declared: tuple[PreparedData, Bundles]) -> None:
    from rankforge.models.inputs import pad_lists
    from rankforge.training.batches import FeatureTables

    data, _ = declared
    tables = FeatureTables.build(data)
    users = torch.arange(data.n_users)
    # computed from the latest history as training computes it from a point-in-time one ...
    from_history = tables.users(users, tables.user_history)["brand_history"]
    # ... equals the list written to Redis and served
    served = pad_lists(data.user_features["brand_history"], data.history_len)
    assert torch.equal(from_history, served)
    example = data.ranking_examples.filter(pl.col("history").list.len() > 2).row(0, named=True)
    got = tables.users(torch.tensor([example["user_idx"]]), pad_lists([example["history"]], data.history_len))
    brand_of = tables.item_lists["item_brand"][:, 0]
    assert got["brand_history"][0][: len(example["history"])].tolist() == [
        int(brand_of[i]) for i in example["history"]
    ]


def test_training_rows_carry_their_events_context(declared: tuple[PreparedData, Bundles]) -> None:
    from rankforge.training.batches import FeatureTables, NegativeSampler, RankingBatches

    data, bundles = declared
    (hour,) = data.inputs.context
    raw = pl.read_csv(bundles.ranker.parent / "log.csv")["hour"].cast(pl.Float64)
    assert abs(hour.shift - raw.mean()) < 2.0 and hour.scale > 1.0  # standardised on the training part
    # the training column is the served transform of each event's raw value
    events = data.ranking_examples.select("timestamp", "hour_of_day").head(50)
    expected = [hour.normalise(float((ts // 3600) % 24)) for ts in events["timestamp"]]
    np.testing.assert_allclose(events["hour_of_day"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    tables = FeatureTables.build(data)
    batches = RankingBatches(data, tables, NegativeSampler(tables.item_events, "uniform"), 2, batch_size=32)
    allowed = set(np.round(data.ranking_examples["hour_of_day"].to_numpy(), 5))
    for batch in batches:
        assert set(np.round(batch.dense[:, -1].numpy(), 5)) <= allowed  # negatives share their event's
    with pytest.raises(DataError, match="carry no request context"):
        tables.dense(torch.tensor([0]), torch.tensor([0]))


def _until_served(server: RankingServer, client: RankingClient, user_id: int, version: str) -> None:
    """Send requests until the server holds ``version`` (the one held answers until it is loaded)."""
    deadline = time.monotonic() + 10.0
    while server.reader.served is None or server.reader.served.name != version:
        assert time.monotonic() < deadline, f"feature version {version} was never loaded"
        with contextlib.suppress(grpc.RpcError):  # the previous version's own refusal
            client.rank(user_id, k=5, context={"hour_of_day": 13.0})
        time.sleep(0.02)


@pytest.mark.redis
def test_a_feature_version_with_another_vocabulary_is_refused(
    declared: tuple[PreparedData, Bundles], redis_client: redis.Redis, redis_url: str, layout: KeyLayout
) -> None:
    import json

    data, bundles = declared
    writer = FeatureWriter(redis_client, layout, ttl_s=300)
    writer.write(data)
    server = start_server(bundles, redis_url, layout)
    user_id = data.mapping.users["user_id"][0]
    try:
        with RankingClient(server.address) as client:
            for change, message in [
                ({"item_tags": "0" * 16}, "feature 'item_tags': the feature version's vocabulary differs"),
                ({"user_country": None}, "feature 'user_country': the feature version's vocabulary differs"),
            ]:
                version = writer.write(data).version  # a new current version, its meta then altered
                meta = json.loads(redis_client.get(layout.meta(version)))
                meta["vocabularies"] |= change
                redis_client.set(layout.meta(version), json.dumps(meta))
                _until_served(server, client, user_id, version)
                with pytest.raises(grpc.RpcError) as refused:
                    client.rank(user_id, k=5, context={"hour_of_day": 13.0})
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert message in refused.value.details()
    finally:
        server.stop(0)

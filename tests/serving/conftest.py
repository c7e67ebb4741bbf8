"""Serving fixtures: small freshly initialised bundles, a private Redis prefix, a live server."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis
import torch

from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle, ranking_frame
from rankforge.bundles.onnx_export import run_onnx
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.features.synthetic import GENRES_FEATURE
from rankforge.models.inputs import dense_inputs, side_inputs, sparse_features
from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower
from rankforge.serving.feature_layout import KeyLayout
from rankforge.serving.feature_reader import connect
from rankforge.serving.feature_writer import FeatureWriter
from rankforge.serving.ranking_service import ServiceLimits
from rankforge.serving.server import RankingServer, ServerConfig

MAX_GENRES = 8


@dataclass(frozen=True)
class Bundles:
    retrieval: Path
    retrieval_b: Path  # a second, differently initialised retrieval model (refresh test)
    ranker: Path


@pytest.fixture(scope="session")
def serving_data() -> PreparedData:
    return prepare(DataConfig(synthetic=SyntheticConfig(n_users=50, n_items=80), features=[GENRES_FEATURE]))


def _two_tower(d: PreparedData, seed: int) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(
        sparse_features(d.inputs, "user"),
        sparse_features(d.inputs, "item"),
        embedding_dim=8,
        tower_sizes=(16, 8),
    )


@pytest.fixture(scope="session")
def bundles(serving_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    d = serving_data
    root = tmp_path_factory.mktemp("bundles")
    paths = Bundles(root / "retrieval-a", root / "retrieval-b", root / "ranker")
    for path, seed in ((paths.retrieval, 0), (paths.retrieval_b, 1)):
        path.mkdir()
        build_retrieval_bundle(_two_tower(d, seed), d, str(path))
    torch.manual_seed(2)
    sparse = sparse_features(d.inputs, "user") + sparse_features(d.inputs, "item")
    paths.ranker.mkdir()
    build_ranker_bundle(RankingModel(sparse, DENSE_FEATURES, embedding_dim=8), d, str(paths.ranker))
    return paths


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url, timeout_s=2.0)
    yield client
    client.close()


@pytest.fixture
def layout(redis_client: redis.Redis) -> Iterator[KeyLayout]:
    """A random key prefix per test, deleted afterwards."""
    layout = KeyLayout(f"rftest-{uuid.uuid4().hex[:10]}")
    yield layout
    keys = list(redis_client.scan_iter(f"{layout.prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def feature_version(redis_client: redis.Redis, layout: KeyLayout, serving_data: PreparedData) -> str:
    return FeatureWriter(redis_client, layout, ttl_s=300).write(serving_data).version


def start_server(
    bundles: Bundles,
    redis_url: str,
    layout: KeyLayout,
    retrieval: Path | None = None,
    **overrides: object,
) -> RankingServer:
    """Bundles from the session fixture, this test's Redis prefix, a free port, no refresh."""
    limits = overrides.pop("limits", ServiceLimits())
    config = ServerConfig(
        retrieval=str(retrieval or bundles.retrieval),
        ranker=str(overrides.pop("ranker", bundles.ranker)),
        redis_url=redis_url,
        feature_prefix=layout.prefix,
        port=overrides.pop("port", 0),
        workers=overrides.pop("workers", 4),
        refresh_interval_s=overrides.pop("refresh_interval_s", 0.0),
        limits=limits,
        **overrides,
    )
    return RankingServer(config).start()


@pytest.fixture
def make_server(
    bundles: Bundles, redis_url: str, layout: KeyLayout
) -> Iterator[Callable[..., RankingServer]]:
    """Factory for servers on free loopback ports (this test's prefix); all stopped at teardown."""
    started: list[RankingServer] = []

    def make(**overrides: object) -> RankingServer:
        url = str(overrides.pop("redis_url", redis_url))
        srv = start_server(bundles, url, layout, **overrides)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(0)


@pytest.fixture
def server(make_server: Callable[..., RankingServer], feature_version: str) -> RankingServer:
    return make_server()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stalled_redis() -> Iterator[str]:
    """A loopback port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


# -- the expected answer, computed independently of the server: Polars tables, the export-side
# input helpers (rankforge.models.inputs) and a fresh ONNX Runtime session per graph.


def expected_ranking(
    data: PreparedData,
    retrieval_dir: Path,
    ranker_dir: Path,
    user_id: int,
    k: int,
    retrieve_factor: int,
    candidates: list[int] | None = None,
    context: dict[str, float] | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(raw item ids, ranker logits, retrieval scores) of the top ``k``, best first."""
    user_idx = data.mapping.users.filter(pl.col("user_id") == user_id)["user_idx"].item()
    user_row = data.user_features.filter(pl.col("user_idx") == user_idx)
    query = run_onnx(
        retrieval_dir / "user_tower.onnx",
        {n: t.numpy() for n, t in side_inputs(user_row, data.inputs, "user").items()},
    )[0]
    embeddings = np.load(retrieval_dir / "item_embeddings.npy")
    # never answered: every item of the user's known events, whatever the label (as evaluation masks)
    known = (
        data.train_events
        if data.validation_events is None
        else pl.concat([data.train_events, data.validation_events])
    )
    seen = set(known.filter(pl.col("user_idx") == user_idx)["item_idx"].to_list())
    if candidates is None:
        n = min(data.n_items, k * retrieve_factor + len(seen))
        top = np.argsort(-(embeddings @ query), kind="stable")[:n]
        chosen = [int(i) for i in top if int(i) not in seen][: k * retrieve_factor]
    else:
        to_idx = dict(zip(data.mapping.items["item_id"], data.mapping.items["item_idx"], strict=True))
        chosen = [to_idx[c] for c in candidates if to_idx[c] not in seen]
    rows = ranking_frame(pl.DataFrame({"user_idx": [user_idx] * len(chosen), "item_idx": chosen}), data)
    for name, value in (context or {}).items():
        rows = rows.with_columns(pl.lit(value, dtype=pl.Float32).alias(name))
    sparse = {**side_inputs(rows, data.inputs, "user"), **side_inputs(rows, data.inputs, "item")}
    logits = run_onnx(
        ranker_dir / "ranker.onnx",
        {
            "dense": dense_inputs(rows, data.inputs.dense_features).numpy(),
            **{n: t.numpy() for n, t in sparse.items()},
        },
    )
    order = np.argsort(-logits, kind="stable")[:k]
    raw = rows["item_id"].to_numpy()
    return [int(raw[i]) for i in order], logits[order], embeddings[np.asarray(chosen)[order]] @ query


def user_with_history(data: PreparedData, min_len: int = 3) -> int:
    """A raw user id whose stored history has at least ``min_len`` items."""
    row = data.user_features.filter(pl.col("history").list.len() >= min_len).row(0, named=True)
    return int(data.mapping.users.filter(pl.col("user_idx") == row["user_idx"])["user_id"].item())


def history_item_ids(data: PreparedData, user_id: int) -> list[int]:
    user_idx = data.mapping.users.filter(pl.col("user_id") == user_id)["user_idx"].item()
    history = data.user_features.filter(pl.col("user_idx") == user_idx)["history"].item().to_list()
    by_idx = dict(zip(data.mapping.items["item_idx"], data.mapping.items["item_id"], strict=True))
    return [int(by_idx[i]) for i in history]


def seen_item_ids(data: PreparedData, user_id: int) -> list[int]:
    """Raw ids of every item of the user's known events (any label)."""
    user_idx = data.mapping.users.filter(pl.col("user_id") == user_id)["user_idx"].item()
    known = (
        data.train_events
        if data.validation_events is None
        else pl.concat([data.train_events, data.validation_events])
    )
    items = known.filter(pl.col("user_idx") == user_idx)["item_idx"].unique().to_list()
    by_idx = dict(zip(data.mapping.items["item_idx"], data.mapping.items["item_id"], strict=True))
    return sorted(int(by_idx[i]) for i in items)


@pytest.fixture(scope="session")
def seen_of(serving_data: PreparedData) -> Callable[[int], list[int]]:
    return lambda uid: seen_item_ids(serving_data, uid)


@pytest.fixture(scope="session")
def expected() -> Callable[..., tuple[list[int], np.ndarray, np.ndarray]]:
    return expected_ranking


@pytest.fixture(scope="session")
def user_id(serving_data: PreparedData) -> int:
    return user_with_history(serving_data)


@pytest.fixture(scope="session")
def history_of(serving_data: PreparedData) -> Callable[[int], list[int]]:
    return lambda uid: history_item_ids(serving_data, uid)

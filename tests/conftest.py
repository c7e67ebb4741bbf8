"""Shared fixtures: isolated MLflow stores, the real local Redis, the shared MovieLens data."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.features.synthetic import GENRES_FEATURE

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO.parent / "shared" / "data" / "ml-latest-small"
GOWALLA = REPO.parent / "shared" / "data" / "gowalla"
PSL_ELECTRONIC = REPO.parent / "shared" / "data" / "psl-ir-benchmark" / "amazon2014-electronic"


@pytest.fixture
def rankforge_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RANKFORGE_HOME (SQLite MLflow store + artifacts) per test."""
    home = tmp_path / "rankforge-home"
    monkeypatch.setenv("RANKFORGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis on localhost (started if it is not answering)."""
    from rankforge.infra.redis_server import ensure_redis

    url = "redis://127.0.0.1:6379/0"
    ensure_redis(url)
    return url


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.fail(f"MovieLens data not found at {MOVIELENS} (the shared/ folder next to the repository)")
    return MOVIELENS


@pytest.fixture(scope="session")
def gowalla_dir() -> Path:
    if not (GOWALLA / "train.txt").is_file():
        pytest.fail(
            f"Gowalla (LightGCN split) not found at {GOWALLA} (the shared/ folder next to the repository)"
        )
    return GOWALLA


@pytest.fixture(scope="session")
def psl_electronic_dir() -> Path:
    if not (PSL_ELECTRONIC / "train.tsv").is_file():
        pytest.fail(
            f"the PSL paper's Amazon-Electronic split not found at {PSL_ELECTRONIC} "
            "(the shared/ folder next to the repository)"
        )
    return PSL_ELECTRONIC


@pytest.fixture(scope="session")
def small_data() -> PreparedData:
    """A small synthetic dataset prepared once per session (read-only by convention)."""
    return prepare(
        DataConfig(synthetic=SyntheticConfig(n_users=60, n_items=90, seed=3), features=[GENRES_FEATURE])
    )

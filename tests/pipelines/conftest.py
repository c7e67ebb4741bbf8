"""Trained and untrained bundles shared by the evaluation/promotion tests (built once per module)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.features.synthetic import GENRES_FEATURE
from rankforge.models.inputs import sparse_features
from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower

EVAL_DATA = DataConfig(synthetic=SyntheticConfig(n_users=120, n_items=150, seed=3), features=[GENRES_FEATURE])


@pytest.fixture(scope="module")
def eval_data() -> PreparedData:
    return prepare(EVAL_DATA)


def random_retrieval_bundle(data: PreparedData, directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TwoTower(
        sparse_features(data.inputs, "user"),
        sparse_features(data.inputs, "item"),
    )
    build_retrieval_bundle(model, data, str(directory))
    return directory


def random_ranker_bundle(data: PreparedData, directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    sparse = sparse_features(data.inputs, "user") + sparse_features(data.inputs, "item")
    build_ranker_bundle(RankingModel(sparse, DENSE_FEATURES), data, str(directory))
    return directory

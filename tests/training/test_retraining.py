"""Retraining a serving model: Confidence Ranking against it (``objective.reference``) and warm
starts from it (``training.warm_start``), both across id mappings that grew since it was trained."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from rankforge.bundles.bundle import WEIGHTS, load_bundle
from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.errors import ConfigError
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.features.synthetic import GENRES_FEATURE
from rankforge.models.inputs import sparse_features
from rankforge.models.ranking import RankingModel
from rankforge.pipelines.bundle_scoring import ranker_probabilities
from rankforge.pipelines.train import run_training
from rankforge.settings import Settings
from rankforge.training.batches import FeatureTables
from rankforge.training.config import MlflowConfig, TrainConfig, parse_config
from rankforge.training.reference import BundleReference, open_reference
from rankforge.training.sharding import DistEnv, init_distributed, shutdown_distributed
from rankforge.training.trainer import Trainer

OLD = DataConfig(synthetic=SyntheticConfig(n_users=60, n_items=90, seed=3), features=[GENRES_FEATURE])
NEW = DataConfig(
    synthetic=SyntheticConfig(n_users=70, n_items=110, seed=4), features=[GENRES_FEATURE]
)  # grown catalogue


@pytest.fixture(scope="module")
def old_data() -> PreparedData:
    return prepare(OLD)


@pytest.fixture(scope="module")
def new_data() -> PreparedData:
    return prepare(NEW)


@pytest.fixture
def env() -> Iterator[DistEnv]:
    env = init_distributed()
    yield env
    shutdown_distributed(env)


def _ranker(data: PreparedData, seed: int) -> RankingModel:
    torch.manual_seed(seed)
    sparse = sparse_features(data.inputs, "user") + sparse_features(data.inputs, "item")
    return RankingModel(sparse, DENSE_FEATURES, embedding_dim=8, dense_sizes=(8,), over_sizes=(16, 1))


@pytest.fixture(scope="module")
def old_bundle(old_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("old_ranker")
    build_ranker_bundle(_ranker(old_data, 7), old_data, str(directory))
    return directory


def _raw(mapping: pl.DataFrame, key: str, idx: np.ndarray) -> np.ndarray:
    table = mapping.sort(f"{key}_idx")[f"{key}_id"].to_numpy()
    return table[idx]


def test_reference_scores_what_the_served_ranker_scores(
    old_bundle: Path, old_data: PreparedData, new_data: PreparedData
) -> None:
    tables = FeatureTables.build(new_data)
    reference = BundleReference(load_bundle(old_bundle), new_data, tables)
    users = torch.arange(new_data.n_users).repeat_interleave(3)
    items = torch.randint(new_data.n_items, (len(users),), generator=torch.Generator().manual_seed(0))
    logits, covered = reference(users, items, tables.user_history[users], tables.dense(users, items))

    old_items = set(old_data.mapping.items["item_id"].to_list())
    known = np.isin(_raw(new_data.mapping.items, "item", items.numpy()), list(old_items))
    assert covered.numpy().tolist() == known.tolist() and 0 < known.sum() < len(known)
    # the served path (bundle scoring, raw ids through the bundle's own mapping)
    pairs = pl.DataFrame({"user_idx": users.numpy(), "item_idx": items.numpy()})
    served = ranker_probabilities(load_bundle(old_bundle), pairs, new_data)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy()[known], served[known], rtol=1e-5, atol=1e-6)
    coverage = reference.coverage()
    assert coverage["reference_item_coverage"] == pytest.approx(len(old_items) / new_data.n_items)


def test_a_reference_that_does_not_fit_is_a_clear_error(
    old_data: PreparedData, new_data: PreparedData, tmp_path: Path
) -> None:
    tables = FeatureTables.build(new_data)
    retrieval = tmp_path / "retrieval"
    from rankforge.models.inputs import sparse_features
    from rankforge.models.two_tower import TwoTower

    model = TwoTower(
        sparse_features(old_data.inputs, "user"),
        sparse_features(old_data.inputs, "item"),
    )
    build_retrieval_bundle(model, old_data, str(retrieval))
    args = (new_data, tables, tmp_path / "dl")
    with pytest.raises(ConfigError, match="is a retrieval bundle; Confidence Ranking needs a ranker"):
        open_reference(str(retrieval), *args)
    with pytest.raises(ConfigError, match=r"objective\.reference: not a model bundle"):
        open_reference(str(tmp_path / "nowhere"), *args)
    with pytest.raises(ConfigError, match="no registered model 'absent'"):
        open_reference("models:/absent@champion", *args)


def test_confidence_ranking_names_its_reference() -> None:
    raw = {"model": {"kind": "ranking"}, "objective": {"name": "confidence_ranking"}}
    with pytest.raises(ConfigError, match=r"objective 'confidence_ranking' needs objective.reference"):
        parse_config(raw)
    raw["objective"] = {"name": "bce", "reference": "item_rate"}
    with pytest.raises(ConfigError, match="objective 'bce' uses no reference model"):
        parse_config(raw)


def _config(out: Path, **training: object) -> TrainConfig:
    return parse_config(
        {
            "data": NEW.model_dump(mode="json"),
            "model": {"kind": "ranking", "embedding_dim": 8, "dense_sizes": [8], "over_sizes": [16, 1]},
            "objective": {"name": "bce"},
            "training": {"epochs": 1, "batch_size": 128, **training},
            "negatives": {"count": 2},
            "output_dir": str(out),
        }
    )


def test_warm_start_copies_rows_by_raw_id_and_keeps_new_rows_fresh(
    old_bundle: Path, new_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    cold = Trainer(_config(tmp_path / "cold"), new_data, env)
    cold.start(resume=False)
    fresh = cold.unsharded_state_dict()
    warm = Trainer(_config(tmp_path / "warm", warm_start=str(old_bundle)), new_data, env)
    warm.start(resume=False)
    state = warm.unsharded_state_dict()
    assert fresh is not None and state is not None
    theirs = torch.load(old_bundle / WEIGHTS, weights_only=True)
    old_mapping = load_bundle(old_bundle).id_mapping
    old_item_of = dict(
        zip(old_mapping.items["item_id"].to_list(), old_mapping.items["item_idx"].to_list(), strict=True)
    )
    new_items = new_data.mapping.items.sort("item_idx")["item_id"].to_list()
    key = next(k for k in state if k.endswith("t_item_id.weight"))
    for row, raw in enumerate(new_items):
        if raw in old_item_of:
            torch.testing.assert_close(state[key][row], theirs[key][old_item_of[raw]])
        else:  # an item the old model never saw keeps the new job's own initialisation
            torch.testing.assert_close(state[key][row], fresh[key][row])
    dense = next(k for k in state if "over_arch" in k and k.endswith("weight"))
    torch.testing.assert_close(state[dense], theirs[dense])
    # a declared feature's rows follow its vocabulary's values (here both data sets have 6 genres)
    old_genres = load_bundle(old_bundle).vocabulary("item_genres")
    old_genre_of = dict(zip(old_genres["value"].to_list(), old_genres["index"].to_list(), strict=True))
    genres = next(k for k in state if k.endswith("t_item_genres.weight"))
    for value, row in new_data.vocabularies["item_genres"].iter_rows():
        torch.testing.assert_close(state[genres][row], theirs[genres][old_genre_of[value]])
    assert warm.warm_rows == {
        "users": 60,
        "items": len(set(new_items) & set(old_item_of)),
        "item_genres": len(old_genre_of),
    }


def test_warm_start_from_another_model_config_is_a_one_line_error(
    old_bundle: Path, new_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    config = _config(tmp_path / "wide", warm_start=str(old_bundle))
    config = config.model_copy(update={"model": config.model.model_copy(update={"over_sizes": [32, 1]})})
    with pytest.raises(
        ConfigError, match=r"training.warm_start: .*over_arch.* is \(16,?.*\) there, \(32,?.*\) here"
    ):
        Trainer(config, new_data, env).start(resume=False)


def test_a_retraining_job_against_the_champion(rankforge_home: Path, tmp_path: Path) -> None:
    """The whole loop: a champion is registered, the next job names it (registry URI) as its
    Confidence Ranking reference and warm start, and the run records what it inherited."""
    first = _config(tmp_path / "first").model_copy(
        update={"mlflow": MlflowConfig(registered_model="cr-ranker")}
    )
    run_training(first)
    champion = "models:/cr-ranker@champion"
    raw = _config(tmp_path / "second", warm_start=champion).model_dump(mode="json", exclude={"source_path"})
    raw["objective"] = {"name": "confidence_ranking", "reference": champion}
    raw["mlflow"] = {"registered_model": "cr-ranker"}
    result = run_training(parse_config(raw))
    assert result.registered is not None and result.registered.version == 2
    mlflow.set_tracking_uri(Settings.from_env().tracking_uri)
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["reference_item_coverage"] == 1.0 and metrics["reference_user_coverage"] == 1.0
    assert metrics["warm_start_items"] == float(prepare(NEW).n_items)
    assert np.isfinite(metrics["train_loss"])

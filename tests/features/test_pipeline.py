from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from rankforge.errors import DataError
from rankforge.features.id_mapping import IdMapping
from rankforge.features.pipeline import DataConfig, PreparedData, SyntheticConfig, prepare
from rankforge.features.synthetic import GENRES_FEATURE, generate_log


def test_synthetic_log_is_deterministic_and_valid() -> None:
    a, b = generate_log(seed=7), generate_log(seed=7)
    assert a.interactions.equals(b.interactions)
    assert not a.interactions.equals(generate_log(seed=8).interactions)
    assert a.interactions["rating"].is_between(1, 5).all()
    assert a.interactions.select(pl.struct("user_id", "item_id").is_unique().all()).item()


def test_prepared_ids_are_dense_and_features_cover_everything(small_data: PreparedData) -> None:
    d = small_data
    assert d.train_events["user_idx"].max() < d.n_users and d.train_events["item_idx"].max() < d.n_items
    assert d.item_features["item_idx"].to_list() == list(range(d.n_items))
    assert d.user_features["user_idx"].to_list() == list(range(d.n_users))
    assert d.vocabularies["item_genres"].height == 6  # the declared genre feature's vocabulary
    assert d.retrieval_examples.height == d.train_events.filter(pl.col("label") > 0).height
    # every history item is an earlier positive of the same user
    assert d.retrieval_examples["history"].list.len().max() <= d.history_len


def test_no_test_event_leaks_into_history(small_data: PreparedData) -> None:
    test_pairs = set(small_data.test_events.select("user_idx", "item_idx").iter_rows())
    hist = small_data.user_features.explode("history").drop_nulls("history")
    assert not test_pairs & set(hist.select("user_idx", "history").iter_rows())


def test_id_mapping_round_trip(tmp_path: Path, small_data: PreparedData) -> None:
    small_data.mapping.save(tmp_path)
    loaded = IdMapping.load(tmp_path)
    assert loaded.users.equals(small_data.mapping.users) and loaded.items.equals(small_data.mapping.items)


def test_unknown_ids_are_dropped_by_encode() -> None:
    m = IdMapping.fit(pl.DataFrame({"user_id": [1, 2], "item_id": [10, 20]}))
    out = m.encode(pl.LazyFrame({"user_id": [1, 3], "item_id": [20, 10]})).collect()
    assert out.select("user_idx", "item_idx").rows() == [(0, 1)]


@pytest.mark.parametrize("spread", [1, 10**12])  # compact ids (a table lookup), sparse ids (a hash map)
def test_encode_keeps_row_order_and_drops_every_kind_of_unknown_id(spread: int) -> None:
    rng = np.random.default_rng(1)
    users, items = rng.choice(500, 200, replace=False) * spread, rng.choice(300, 100, replace=False) * spread
    m = IdMapping.fit(pl.DataFrame({"user_id": np.repeat(users, 2), "item_id": np.resize(items, 400)}))
    # known ids, ids inside the range but unseen, below and above it, and nulls
    asked_users = np.concatenate([users, users[:20] + spread * 1000, [-7 * spread, users.max() + 1]])
    frame = pl.DataFrame(
        {"user_id": asked_users, "item_id": rng.choice(np.concatenate([items, items + 1]), asked_users.size)}
    ).with_columns(
        pl.when(pl.int_range(pl.len()) % 17 == 0).then(None).otherwise(pl.col("item_id")).alias("item_id")
    )
    expected = (
        frame.with_row_index("_row")
        .join(m.users, on="user_id", how="inner")
        .join(m.items, on="item_id", how="inner")
        .sort("_row")
        .drop("_row")
    )
    got = m.encode(frame.lazy()).collect()
    assert got.height > 0 and got.equals(expected.select(got.columns))


def test_config_rejects_unknown_keys_and_missing_path() -> None:
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(sourcee="synthetic")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"data\.path is required"):
        DataConfig(source="movielens")


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        prepare(DataConfig(source="movielens", path=tmp_path))


def test_all_negative_log_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "ratings.csv"
    p.write_text("userId,movieId,rating,timestamp\n1,1,1.0,1\n1,2,1.0,2\n2,1,2.0,3\n2,3,1.0,4\n")
    with pytest.raises(DataError, match="no positive training events"):
        prepare(DataConfig(source="movielens", path=tmp_path))


def test_lightgcn_provided_split(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 2 3\n2 1\n")
    (tmp_path / "test.txt").write_text("0 4\n1 1\n")
    d = prepare(DataConfig(source="lightgcn", path=tmp_path, split="provided"))
    assert d.train_events["label"].to_list() == [1] * 6  # implicit feedback: every event positive
    assert d.test_positives().height == 1  # item 4 never appears in train: no embedding, dropped


@pytest.mark.movielens
def test_movielens_end_to_end_features(movielens_dir: Path) -> None:
    d = prepare(DataConfig(source="movielens", path=movielens_dir, features=[GENRES_FEATURE]))
    assert d.n_users == 610
    assert d.test_events.group_by("user_idx").len()["len"].max() == 1
    assert d.vocabularies["item_genres"].height == 19
    pos_rate = d.train_events["label"].mean()
    assert 0.4 < pos_rate < 0.6
    assert np.isfinite(d.item_features["item_pos_rate"].to_numpy()).all()


def test_synthetic_config_bounds() -> None:
    with pytest.raises(ValidationError):
        SyntheticConfig(n_users=0)


def test_ranking_examples_never_see_their_own_item(small_data: PreparedData) -> None:
    ex = small_data.ranking_examples
    assert ex.height == small_data.train_events.height
    assert set(ex["label"].unique().to_list()) == {0, 1}
    leaked = ex.filter(pl.col("history").list.contains(pl.col("item_idx")))
    assert leaked.height == 0
    # the history is the past: the user's later positives never appear in it
    assert ex["history"].list.len().min() == 0


def test_prepared_row_order_is_fully_determined() -> None:
    config = DataConfig(synthetic=SyntheticConfig(n_users=40, n_items=60, seed=5))
    a, b = prepare(config), prepare(config)
    for name in ("train_events", "test_events", "retrieval_examples", "ranking_examples"):
        assert getattr(a, name).equals(getattr(b, name)), name


def test_synthetic_held_out_events_are_not_biased_towards_dislikes() -> None:
    d = prepare(DataConfig(synthetic=SyntheticConfig(n_users=200, n_items=150, seed=11)))
    train_rate, test_rate = d.train_events["label"].mean(), d.test_events["label"].mean()
    assert abs(train_rate - test_rate) < 0.12, (train_rate, test_rate)


def test_data_config_from_files(tmp_path: Path) -> None:
    from rankforge.errors import ConfigError

    toml = tmp_path / "train.toml"
    toml.write_text('[data]\nsource = "synthetic"\nhistory_len = 7\n[model]\nkind = "retrieval"\n')
    assert DataConfig.from_file(toml).history_len == 7
    yml = tmp_path / "data.yaml"
    yml.write_text("split: time\ntest_fraction: 0.3\n")
    assert DataConfig.from_file(yml).split == "time"
    bad = tmp_path / "bad.yaml"
    bad.write_text("splitt: time\n")
    with pytest.raises(ConfigError, match="splitt"):
        DataConfig.from_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        DataConfig.from_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid toml"):
        DataConfig.from_file(broken)

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.evaluation.replay import ips_value
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.replay_log import (
    as_log,
    build_replay_log,
    greedy_actions,
    policy_probabilities,
    read_replay_log,
    write_replay_log,
)


def test_replay_log_is_a_uniform_logging_policy_over_unseen_slates(eval_data: PreparedData) -> None:
    log = build_replay_log(eval_data, slate_size=8, seed=1)
    assert log.equals(build_replay_log(eval_data, slate_size=8, seed=1))
    assert not log.equals(build_replay_log(eval_data, slate_size=8, seed=2))
    test = eval_data.test_positives()
    assert log.height == test.height
    assert (log["propensity"] == 1 / 8).all()
    assert log["slate"].list.len().eq(8).all() and log["slate"].list.n_unique().eq(8).all()
    assert log.select(pl.col("slate").list.contains(pl.col("action"))).to_series().all()
    # the held-out item is in every slate and the reward says whether it was the one shown
    joined = log.with_columns(test["item_id"].alias("held_out"))
    assert joined.select(pl.col("slate").list.contains(pl.col("held_out"))).to_series().all()
    assert joined.select(pl.col("reward") == (pl.col("action") == pl.col("held_out"))).to_series().all()
    # the filler items were never touched by the user in training
    train = set(eval_data.train_events.select("user_id", "item_id").iter_rows())
    fillers = joined.explode("slate").filter(pl.col("slate") != pl.col("held_out"))
    assert not train & set(fillers.select("user_id", "slate").iter_rows())
    # IPS of the logging policy itself is the mean logged reward
    replay = as_log(log)
    assert ips_value(replay, replay.propensities) == pytest.approx(log["reward"].mean())


def test_write_read_and_validation(eval_data: PreparedData, tmp_path: Path) -> None:
    log = build_replay_log(eval_data, slate_size=5)
    path = write_replay_log(log, tmp_path / "log.parquet")
    assert read_replay_log(path).equals(log)
    log.drop("propensity").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['propensity'\]"):
        read_replay_log(tmp_path / "bad.parquet")
    log.with_columns(pl.lit(-5, dtype=pl.Int64).alias("action")).write_parquet(tmp_path / "bad2.parquet")
    with pytest.raises(DataError, match="not in its slate"):
        read_replay_log(tmp_path / "bad2.parquet")
    with pytest.raises(DataError, match="not found"):
        read_replay_log(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="exceeds"):
        build_replay_log(eval_data, slate_size=10_000)


def test_policies() -> None:
    scores = np.array([[0.1, 0.9, 0.9], [3.0, 1.0, 2.0]])
    probs, logged = policy_probabilities(scores, np.array([1, 2]))
    assert probs.tolist() == [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]] and logged.tolist() == [0.5, 0.0]
    soft, _ = policy_probabilities(scores, np.array([0, 0]), temperature=1.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert greedy_actions(np.array([[7, 8, 9], [4, 5, 6]]), scores).tolist() == [8, 4]

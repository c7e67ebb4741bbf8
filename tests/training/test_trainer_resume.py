"""An interrupted job resumes from its epoch checkpoint and ends exactly where a straight run does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rankforge.errors import ConfigError
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.train_config import TrainConfig, parse_config
from rankforge.training.sharding import DistEnv, init_distributed, shutdown_distributed
from rankforge.training.trainer import EpochStats, Trainer


class Crash(RuntimeError):
    pass


def _config(output_dir: Path, kind: str, **overrides: object) -> TrainConfig:
    raw: dict = {
        "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
        "model": {"kind": kind, "embedding_dim": 8, "tower_sizes": [16, 8], "dense_sizes": [8]},
        "objective": {"name": "sampled_softmax" if kind == "retrieval" else "bce"},
        "optimizer": {"dense": "adamw", "weight_decay": 0.01},
        "training": {"epochs": 2, "batch_size": 128},
        "negatives": {"count": 4, "distribution": "popularity"},
        "output_dir": str(output_dir),
    }
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture
def env() -> Iterator[DistEnv]:
    env = init_distributed()
    yield env
    shutdown_distributed(env)


@pytest.mark.parametrize("kind", ["retrieval", "ranking"])
def test_crash_and_resume_matches_straight_run(
    kind: str, small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    straight = Trainer(_config(tmp_path / "straight", kind), small_data, env)
    assert not straight.start()
    straight.fit()
    expected = straight.unsharded_state_dict()
    assert expected is not None

    def crash_after_first_epoch(stats: EpochStats) -> None:
        if stats.epoch == 1:
            raise Crash

    interrupted = Trainer(_config(tmp_path / "job", kind), small_data, env)
    interrupted.start()
    with pytest.raises(Crash):
        interrupted.fit(crash_after_first_epoch)
    after_one = interrupted.unsharded_state_dict()

    resumed = Trainer(_config(tmp_path / "job", kind), small_data, env)
    assert resumed.start()
    assert resumed.epochs_done == 1
    # what was restored is the crashed job's state, not the fresh init
    for key, value in resumed.unsharded_state_dict().items():
        torch.testing.assert_close(value, after_one[key], rtol=0, atol=0)
    resumed.fit()
    got = resumed.unsharded_state_dict()
    assert got is not None and got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert [round(s.loss, 6) for s in resumed.history] == [round(s.loss, 6) for s in straight.history]
    # and training changed the weights: the comparison above is not between two untouched inits
    fresh = Trainer(_config(tmp_path / "fresh", kind), small_data, env).unsharded_state_dict()
    assert any(not torch.equal(fresh[k], expected[k]) for k in expected)


def test_resume_refuses_a_checkpoint_of_another_config(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    config = _config(tmp_path / "job", "retrieval", training={"epochs": 1, "batch_size": 128})
    first = Trainer(config, small_data, env)
    first.start()
    first.fit()
    other = _config(tmp_path / "job", "retrieval", training={"epochs": 2, "batch_size": 64})
    with pytest.raises(ConfigError, match="different configuration"):
        Trainer(other, small_data, env).start()
    # more epochs with the same shaping config continue the job
    more = Trainer(_config(tmp_path / "job", "retrieval"), small_data, env)
    assert more.start() and more.epochs_done == 1


def test_finished_job_is_not_resumed_and_old_checkpoints_are_pruned(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    config = _config(tmp_path / "job", "ranking", training={"epochs": 3, "batch_size": 256})
    trainer = Trainer(
        config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"keep": 2})}),
        small_data,
        env,
    )
    trainer.start()
    trainer.fit()
    assert [p.name for p in trainer.checkpointer.completed()] == ["epoch_0002", "epoch_0003"]
    trainer.mark_finished()
    again = Trainer(config, small_data, env)
    assert not again.start()
    assert again.epochs_done == 0 and again.checkpointer.latest() is None

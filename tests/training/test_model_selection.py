"""Model selection mechanics: the best epoch's weights are what a job exports, an early stop is
final (a resumed job does not train on), Adam really steps the tables, and schedules follow their
formulas."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.train_config import TrainConfig, parse_config
from rankforge.training.schedule import LearningRateSchedule
from rankforge.training.sharding import DistEnv, init_distributed, shutdown_distributed
from rankforge.training.trainer import EpochStats, Trainer


def _config(output_dir: Path, **optimizer: object) -> TrainConfig:
    return parse_config(
        {
            "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
            "model": {"kind": "mf", "embedding_dim": 8, "init_std": 0.1},
            "objective": {"name": "ccl", "params": {"margin": 0.5}},
            "optimizer": {"sparse": "adam", "sparse_lr": 0.05, **optimizer},
            "training": {"epochs": 4, "batch_size": 64},
            "negatives": {"count": 16, "shared": True},
            "output_dir": str(output_dir),
        }
    )


@pytest.fixture
def env() -> Iterator[DistEnv]:
    env = init_distributed()
    yield env
    shutdown_distributed(env)


def test_best_epoch_weights_are_selected_and_early_stop_is_final(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    trainer = Trainer(_config(tmp_path), small_data, env)
    trainer.start()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(stats: EpochStats) -> bool:
        model = trainer.unsharded_model()
        assert model is not None
        snapshots[stats.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.keep_if_best(model, stats.epoch, {1: 0.1, 2: 0.3, 3: 0.2}[stats.epoch])
        return stats.epoch == 3  # "no improvement": stop after epoch 3 of 4

    trainer.fit(on_epoch_end)
    assert trainer.epochs_done == 3 and trainer.stopped_early and trainer.best_epoch == 2
    selected = trainer.selected_model()
    assert selected is not None
    for key, value in snapshots[2].items():
        torch.testing.assert_close(selected.state_dict()[key], value, rtol=0, atol=0)
    assert any(not torch.equal(snapshots[3][k], snapshots[2][k]) for k in snapshots[2])

    resumed = Trainer(_config(tmp_path), small_data, env)
    assert resumed.start()
    assert (resumed.epochs_done, resumed.best_epoch, resumed.stopped_early) == (3, 2, True)
    resumed.fit()  # an early-stopped job has nothing left to train
    assert resumed.epochs_done == 3


def test_adam_steps_the_tables_and_the_l2_penalty_shrinks_them(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    plain = Trainer(_config(tmp_path / "plain"), small_data, env)
    before = plain.unsharded_state_dict()
    plain.fit()
    after = plain.unsharded_state_dict()
    assert before is not None and after is not None
    user_table = next(k for k in after if "t_user_id" in k)
    assert not torch.equal(before[user_table], after[user_table])  # the tables are optimised
    groups = plain.optimizer.param_groups
    assert any(g["lr"] == 0.05 and g["weight_decay"] == 0.0 for g in groups)  # the tables' Adam group

    l2 = Trainer(_config(tmp_path / "l2", embedding_l2=1.0), small_data, env)
    l2.fit()
    shrunk = l2.unsharded_state_dict()
    assert shrunk is not None
    assert shrunk[user_table].norm() < 0.5 * after[user_table].norm()


def test_schedules_follow_their_formulas() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    cosine = LearningRateSchedule(optimizer, "cosine", total_steps=110, warmup_steps=10)
    expected = {0: 0.05, 9: 0.5, 10: 0.5, 60: 0.25, 110: 0.0}
    for step, lr in expected.items():
        cosine.set(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12), step
    linear = LearningRateSchedule(optimizer, "linear", total_steps=100)
    linear.set(25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.75)
    assert cosine.factor(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))

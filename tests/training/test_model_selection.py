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
from rankforge.training.config import TrainConfig, parse_config
from rankforge.training.schedule import LearningRateSchedule
from rankforge.training.sharding import DistEnv, init_distributed, shutdown_distributed
from rankforge.training.trainer import EpochStats, Trainer


def _config(output_dir: Path, validation: float = 0.0, **optimizer: object) -> TrainConfig:
    return parse_config(
        {
            "data": {
                "synthetic": {"n_users": 60, "n_items": 90, "seed": 3},
                "validation_fraction": validation,
            },
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


def test_plateau_lowers_the_rate_and_restarts_from_the_best_weights(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    """The SimpleX authors' reduce-on-plateau: after a validation that does not improve, every
    rate is multiplied by the factor (not below min_lr) and the next epoch starts from the best
    epoch's weights; a resumed job continues the same schedule."""
    config = _config(tmp_path, schedule="plateau", plateau_factor=0.1, min_lr=0.001, validation=0.2)
    trainer = Trainer(config, small_data, env)
    trainer.start()
    weights: dict[int, dict[str, torch.Tensor]] = {}
    rates: dict[int, float] = {}

    def on_epoch_end(stats: EpochStats) -> bool:
        model = trainer.unsharded_model()
        assert model is not None
        weights[stats.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        rates[stats.epoch] = max(g["lr"] for g in trainer.optimizer.param_groups)
        trainer.keep_if_best(model, stats.epoch, {1: 0.3, 2: 0.2, 3: 0.1, 4: 0.4}[stats.epoch])
        return False

    load = trainer.checkpointer.load_weights
    started_from: dict[int, dict[str, torch.Tensor]] = {}

    def spied_load(source: Path, module: torch.nn.Module) -> None:
        load(source, module)  # the trainer's own restore; record what the next epoch starts from
        state = trainer.unsharded_state_dict()
        assert state is not None
        started_from[trainer.epochs_done + 1] = state

    trainer.checkpointer.load_weights = spied_load  # type: ignore[method-assign]
    trainer.fit(on_epoch_end)
    assert rates == {1: 0.05, 2: 0.05, 3: pytest.approx(0.005), 4: pytest.approx(0.001)}  # floor
    assert trainer.schedule.scale == pytest.approx(0.01)
    # epochs 3 and 4 started from epoch 1's weights (the best), not from the epoch before them
    assert sorted(started_from) == [3, 4]
    for epoch in (3, 4):
        for key, value in weights[1].items():
            torch.testing.assert_close(started_from[epoch][key], value, rtol=0, atol=0)


def test_full_table_weight_decay_is_the_l2_gradient_and_clipping_bounds_the_norm(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    """embedding_weight_decay = lambda adds lambda * W to every table row's gradient (the authors'
    lambda / 2 * ||W||^2 regulariser), rows the batch never touched included."""
    trainer = Trainer(_config(tmp_path, embedding_weight_decay=0.5), small_data, env)
    tables = [g for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.5]
    assert tables and all(p.dim() == 2 for g in tables for p in g["params"])
    from rankforge.training.trainer import clip_gradients

    params = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))]
    for p in params:
        p.grad = torch.full_like(p, 3.0)  # norm 3 * sqrt(7)
    clip_gradients(params, 1.0)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in params])) == pytest.approx(1.0)
    small = [torch.nn.Parameter(torch.ones(2))]
    small[0].grad = torch.tensor([0.1, 0.2])
    clip_gradients(small, 1.0)
    assert torch.equal(small[0].grad, torch.tensor([0.1, 0.2]))  # within the bound: untouched

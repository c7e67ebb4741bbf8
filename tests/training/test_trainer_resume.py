"""An interrupted job resumes from its epoch checkpoint and ends exactly where a straight run does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rankforge.errors import ConfigError
from rankforge.features.pipeline import PreparedData
from rankforge.training.config import TrainConfig, parse_config
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
    assert resumed.resumed_from is not None and resumed.resumed_from.world_size == 1
    assert resumed.resumed_from.describe(1) == (
        f"resumed from checkpoint {resumed.resumed_from.checkpoint} (1 epoch(s) done), "
        "written by 1 process(es), continuing on 1"
    )
    assert resumed.resumed_from.describe(4).endswith("continuing on 4, tables re-sharded")
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


def _two_epochs_then_crash(small_data: PreparedData, directory: Path, env: DistEnv) -> Trainer:
    config = _config(directory, "ranking", training={"epochs": 3, "batch_size": 256})
    trainer = Trainer(config, small_data, env)
    trainer.start()

    def crash_after_second_epoch(stats: EpochStats) -> None:
        if stats.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        trainer.fit(crash_after_second_epoch)
    return trainer


def _shard(checkpoint: Path) -> Path:
    return next(p for p in sorted(checkpoint.iterdir()) if p.suffix == ".distcp")


@pytest.mark.parametrize("damage", ["overwrite 8 bytes", "truncate", "truncate job state"])
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_resumed(
    damage: str, small_data: PreparedData, tmp_path: Path, env: DistEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """#13 h: a flipped or cut shard (or job state) is detected by its checksum; the job resumes
    from the previous intact epoch instead of loading 3.4e38 embeddings or raising Errno 22."""
    crashed = _two_epochs_then_crash(small_data, tmp_path / "job", env)
    latest = crashed.checkpointer.latest()
    assert latest is not None and latest.name == "epoch_0002"
    if damage == "overwrite 8 bytes":
        shard = _shard(latest)
        data = bytearray(shard.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 8] = b"\xff\x7f\xff\x7f\xff\x7f\xff\x7f"
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard = _shard(latest)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        state = latest / "job_state.pt"
        state.write_bytes(state.read_bytes()[:10])
    resumed = Trainer(
        _config(tmp_path / "job", "ranking", training={"epochs": 3, "batch_size": 256}), small_data, env
    )
    with caplog.at_level("WARNING"):
        assert resumed.start()
    assert resumed.epochs_done == 1  # epoch 2 was damaged: back to epoch 1
    assert any("epoch_0002 is damaged" in r.getMessage() for r in caplog.records)


def test_without_an_intact_checkpoint_the_job_stops_with_one_line(
    small_data: PreparedData, tmp_path: Path, env: DistEnv
) -> None:
    crashed = _two_epochs_then_crash(small_data, tmp_path / "job", env)
    for checkpoint in crashed.checkpointer.completed():
        (checkpoint / "job_state.pt").write_bytes(b"")
    again = Trainer(
        _config(tmp_path / "job", "ranking", training={"epochs": 3, "batch_size": 256}), small_data, env
    )
    with pytest.raises(
        ConfigError, match=r"no intact checkpoint to resume: .*epoch_0002 is damaged: job_state.pt"
    ):
        again.start()


def test_resume_refuses_a_checkpoint_written_on_other_data_in_one_line(tmp_path: Path, env: DistEnv) -> None:
    import polars as pl

    from rankforge.features.pipeline import DataConfig, prepare
    from rankforge.features.synthetic import generate_log

    log_path = tmp_path / "log.parquet"
    log = generate_log(60, 90, seed=3).interactions
    data_config = {"source": "file", "path": str(log_path)}
    config = _config(
        tmp_path / "job", "retrieval", data=data_config, training={"epochs": 2, "batch_size": 128}
    )

    def crashed_after_one_epoch() -> None:
        def crash(stats: EpochStats) -> None:
            raise Crash

        job = Trainer(config, prepare(config.data), env)
        job.start()
        with pytest.raises(Crash):
            job.fit(crash)

    log.write_parquet(log_path)
    crashed_after_one_epoch()
    # the same config over a log whose item ids all changed (same counts): refused, not resumed
    log.with_columns(pl.col("item_id") + 10_000).write_parquet(log_path)
    relabelled = prepare(DataConfig.model_validate(data_config))
    assert relabelled.n_items == prepare(config.data).n_items
    with pytest.raises(ConfigError, match=r"was written on other data \(ids \w+, 60 users, 90 items"):
        Trainer(config, relabelled, env).start()
    # over a log with more items: refused in one line too, before any tensor is loaded
    more = pl.concat([log, log.head(5).with_columns(pl.col("item_id") + 5_000)])
    more.write_parquet(log_path)
    with pytest.raises(ConfigError, match="was written on other data") as err:
        Trainer(config, prepare(config.data), env).start()
    assert "\n" not in str(err.value)
    # a checkpoint written before the data was recorded: the load's own mismatch, in one line
    job = Trainer(config, prepare(config.data), env)
    latest = job.checkpointer.latest_intact()
    assert latest is not None
    state = job.checkpointer.read_state(latest)
    del state["data"]
    job.checkpointer.update_state(latest, state)
    with pytest.raises(ConfigError, match=r"does not fit this job's model \(.*[Ss]ize") as err:
        job.start()
    assert "\n" not in str(err.value)

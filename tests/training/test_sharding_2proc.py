"""Two CPU processes (gloo on loopback) train one sharded job: the replicas must agree.

The test launches this very file under ``torchrun``; each rank trains briefly, then saves its
dense weights, its local table shards (with offsets) and, on rank 0, the gathered export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _config(output_dir: Path, kind: str, sharding_types: list[str]):
    from rankforge.training.config import parse_config

    if kind == "mf":  # Adam tables: replicated data-parallel on CPU, gradients all-reduced by DDP
        return parse_config(
            {
                "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
                "model": {"kind": "mf", "embedding_dim": 8, "init_std": 0.1},
                "objective": {"name": "ccl", "params": {"margin": 0.5}},
                "optimizer": {"sparse": "adam", "sparse_lr": 0.01, "embedding_l2": 1e-4},
                "training": {"epochs": 1, "batch_size": 128},
                "negatives": {"count": 16, "shared": True},
                "output_dir": str(output_dir),
            }
        )
    return parse_config(
        {
            "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
            "model": {"kind": kind, "embedding_dim": 8, "tower_sizes": [16, 8]},
            "objective": {"name": "sampled_softmax" if kind == "retrieval" else "bce"},
            "training": {"epochs": 1, "batch_size": 128},
            "negatives": {"count": 4, "distribution": "popularity"},
            "sharding": {"sharding_types": sharding_types},
            "output_dir": str(output_dir),
        }
    )


def _worker(out: Path, kind: str, sharding_types: list[str]) -> None:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from rankforge.features.pipeline import prepare
    from rankforge.training.sharding import init_distributed, shutdown_distributed, unwrap
    from rankforge.training.trainer import Trainer

    config = _config(out / "job", kind, sharding_types)
    env = init_distributed()
    assert env.world_size == 2 and env.backend == "gloo"
    trainer = Trainer(config, prepare(config.data), env)
    trainer.start(resume=False)
    stats = trainer.fit()
    dense, shards = {}, {}
    for key, value in unwrap(trainer.module).state_dict().items():
        if isinstance(value, ShardedTensor):
            shards[key] = [
                (list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()
            ]
            shards[key + ".size"] = list(value.size())
        else:
            dense[key] = value.detach().clone()
    export = trainer.unsharded_state_dict()
    model = trainer.unsharded_model()
    torch.save(
        {
            "dense": dense,
            "shards": shards,
            "export": export,
            "loaded": None if model is None else model.state_dict(),
            "loss": stats[-1].loss,
        },
        out / f"rank{env.rank}.pt",
    )
    shutdown_distributed(env)


def _launch(tmp_path: Path, kind: str, sharding_types: list[str]) -> tuple[dict, dict]:
    env = {**os.environ, "RANKFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        str(tmp_path),
        kind,
        *sharding_types,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))  # type: ignore[return-value]


def _check_replicas(r0: dict, r1: dict) -> None:
    assert r0["dense"].keys() == r1["dense"].keys() and r0["dense"]
    for key in r0["dense"]:
        torch.testing.assert_close(r0["dense"][key], r1["dense"][key], rtol=0, atol=0)
    assert r0["loss"] == r1["loss"]  # the epoch loss is all-reduced: both ranks report the same
    export = r0["export"]
    assert r1["export"] is None
    tables = [k for k in r0["shards"] if not k.endswith(".size")]
    assert tables, "no sharded tables"
    on_rank1 = [k for k in tables if r1["shards"][k]]
    assert on_rank1, "rank 1 holds no shard: the tables were not distributed"
    for key in tables:
        full = torch.full(r0["shards"][key + ".size"], float("nan"))
        for rank in (r0, r1):
            for offsets, tensor in rank["shards"][key]:
                rows, cols = tensor.shape
                full[offsets[0] : offsets[0] + rows, offsets[1] : offsets[1] + cols] = tensor
        assert not torch.isnan(full).any(), f"{key}: shards do not cover the table"
        torch.testing.assert_close(export[key.removeprefix("model.")], full, rtol=0, atol=0)
    for key, value in r0["dense"].items():
        torch.testing.assert_close(export[key.removeprefix("model.")], value, rtol=0, atol=0)
    # the export loads into a plain model unchanged
    for key, value in r0["loaded"].items():
        torch.testing.assert_close(value, export[key], rtol=0, atol=0)


@pytest.mark.slow
def test_two_rank_retrieval_table_wise(tmp_path: Path) -> None:
    r0, r1 = _launch(tmp_path, "retrieval", ["table_wise", "row_wise"])
    _check_replicas(r0, r1)


@pytest.mark.slow
def test_two_rank_ranking_dlrm(tmp_path: Path) -> None:
    # row_wise is CUDA-only in TorchRec and is dropped on CPU: the planner picks among the rest
    r0, r1 = _launch(tmp_path, "ranking", ["table_wise", "row_wise", "column_wise"])
    _check_replicas(r0, r1)


@pytest.mark.slow
def test_two_rank_mf_with_adam_tables_stays_replicated(tmp_path: Path) -> None:
    r0, r1 = _launch(tmp_path, "mf", [])
    tables = [k for k in r0["dense"] if "embedding_bags" in k]
    assert len(tables) == 2 and not r0["shards"]  # user and item tables, none sharded
    for key in r0["dense"]:  # every replica took the same all-reduced Adam steps
        torch.testing.assert_close(r0["dense"][key], r1["dense"][key], rtol=0, atol=0)
        torch.testing.assert_close(r0["export"][key.removeprefix("model.")], r0["dense"][key], rtol=0, atol=0)
    assert r0["loss"] == r1["loss"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])

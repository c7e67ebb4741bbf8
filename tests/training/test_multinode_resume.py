"""Beyond one process group on one host: two torchrun agents on loopback ("nodes") train the same
job as one standalone launch, and a checkpoint written by 2 processes resumes on 1 (and back).

The test launches this very file under ``torchrun``; each rank trains the tiny two-tower job with
its tables column-wise sharded (every table split across both ranks, so neither rank holds one
whole table), and rank 0 saves the gathered weights and every rank's embedding bytes.

What another world size changes: the job is the same and so is the global batch order (one order
split across ranks, the position carried in the checkpoint), but the weights are not bit-identical
to a run that kept one world size: the tables' initialisation follows their sharding and gradients
are summed in another order. Measured on this job from scratch: epoch-1 loss 1.5811 on 2 processes,
1.5832 on 1. So a resume is tested for what it promises -- exactly the checkpoint's weights,
re-sharded, its history kept, only the remaining epochs trained -- and the same world size across
two "nodes" is tested for the same weights as one standalone launch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")
CRASH_AFTER = 1  # epochs a "crashing" launch trains before it stops


class Crash(RuntimeError):
    pass


def _config(output_dir: Path, column_wise: bool):
    from rankforge.training.config import parse_config

    return parse_config(
        {
            "data": {"synthetic": {"n_users": 60, "n_items": 90, "seed": 3}},
            "model": {"kind": "retrieval", "embedding_dim": 8, "tower_sizes": [16, 8]},
            "objective": {"name": "sampled_softmax"},
            "training": {"epochs": 2, "batch_size": 128},
            # per-example negatives: the draws are one global batch split across ranks
            "negatives": {"count": 4, "distribution": "popularity", "shared": False},
            "sharding": {"sharding_types": ["column_wise"] if column_wise else ["table_wise"]},
            "output_dir": str(output_dir),
        }
    )


def _train(job: Path, out: Path, crash: bool, column_wise: bool = True) -> None:
    """Train (or resume) the job in ``job``; rank 0 writes ``out``: the gathered weights (after
    training, and as restored from a checkpoint), each rank's embedding bytes, the epochs done, the
    world size that wrote the checkpoint it resumed (None: fresh) and the epoch losses."""
    from rankforge.features.pipeline import prepare
    from rankforge.training.sharding import embedding_bytes_per_rank, init_distributed, shutdown_distributed
    from rankforge.training.trainer import EpochStats, Trainer

    config = _config(job, column_wise)
    env = init_distributed()
    trainer = Trainer(config, prepare(config.data), env)
    restored = trainer.unsharded_state_dict() if trainer.start(resume=True) else None  # collective

    def stop(stats: EpochStats) -> None:
        if crash and stats.epoch == CRASH_AFTER:
            raise Crash

    with contextlib.suppress(Crash):
        trainer.fit(stop)
    per_rank = embedding_bytes_per_rank(trainer.module, env)
    weights = trainer.unsharded_state_dict()
    if env.is_main:
        resumed = trainer.resumed_from
        torch.save(
            {
                "weights": weights,
                "restored": restored,
                "per_rank": per_rank,
                "world_size": env.world_size,
                "epochs_done": trainer.epochs_done,
                "resumed_world_size": None if resumed is None else resumed.world_size,
                "losses": [s.loss for s in trainer.history],
            },
            out,
        )
    shutdown_distributed(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "RANKFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def _standalone(nproc: int, job: Path, out: Path, crash: bool = False) -> dict:
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", __file__, str(job), str(out)]
    done = subprocess.run(
        [*cmd, *(["crash"] if crash else [])], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out, weights_only=True)


def _two_nodes(job: Path, out: Path) -> dict:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on loopback."""
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={node}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}",
                "--rdzv_id=rankforge-test",
                __file__,
                str(job),
                str(out),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-4000:]
    return torch.load(out, weights_only=True)


def _assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and expected
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def _assert_continued(resumed: dict, crashed: dict) -> None:
    """The resumed job started from exactly the crashed job's weights, kept its history and
    trained only the epoch that was left."""
    assert crashed["epochs_done"] == CRASH_AFTER and resumed["epochs_done"] == 2
    _assert_same_weights(resumed["restored"], crashed["weights"])
    assert resumed["losses"][:CRASH_AFTER] == crashed["losses"] and len(resumed["losses"]) == 2
    assert any(not torch.equal(resumed["weights"][k], crashed["weights"][k]) for k in crashed["weights"])


@pytest.fixture(scope="module")
def straight_two(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: the whole job, 2 processes of one standalone launch."""
    root = tmp_path_factory.mktemp("standalone")
    return _standalone(2, root / "job", root / "out.pt")


@pytest.mark.slow
def test_two_torchrun_agents_on_loopback_train_the_standalone_weights(
    straight_two: dict, tmp_path: Path
) -> None:
    nodes = _two_nodes(tmp_path / "job", tmp_path / "out.pt")
    assert nodes["world_size"] == straight_two["world_size"] == 2
    _assert_same_weights(nodes["weights"], straight_two["weights"])
    assert nodes["losses"] == straight_two["losses"]
    # column-wise: every table is split, so each rank holds part of it and neither holds the whole
    total = sum(v.numel() * v.element_size() for k, v in nodes["weights"].items() if "embedding_bags" in k)
    assert len(nodes["per_rank"]) == 2 and all(0 < b < total for b in nodes["per_rank"])
    assert sum(nodes["per_rank"]) == total


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_on_one(straight_two: dict, tmp_path: Path) -> None:
    job = tmp_path / "job"
    crashed = _standalone(2, job, tmp_path / "crashed.pt", crash=True)
    _train(job, tmp_path / "resumed.pt", crash=False)  # this process: a world of one
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert (resumed["world_size"], resumed["resumed_world_size"]) == (1, 2)
    _assert_continued(resumed, crashed)  # DCP re-assembled the column-wise shards into whole tables
    assert resumed["per_rank"] == [sum(straight_two["per_rank"])]  # the whole tables on one rank


@pytest.mark.slow
def test_a_checkpoint_of_one_process_resumes_on_two(tmp_path: Path) -> None:
    job = tmp_path / "job"
    _train(job, tmp_path / "crashed.pt", crash=True)  # this process: a world of one, stops after epoch 1
    crashed = torch.load(tmp_path / "crashed.pt", weights_only=True)
    resumed = _standalone(2, job, tmp_path / "resumed.pt")
    assert (resumed["world_size"], resumed["resumed_world_size"]) == (2, 1)
    _assert_continued(resumed, crashed)  # DCP cut the whole tables into the two ranks' columns


if __name__ == "__main__":
    _train(Path(sys.argv[1]), Path(sys.argv[2]), crash=sys.argv[3:] == ["crash"])

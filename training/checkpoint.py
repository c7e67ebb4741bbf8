"""Per-epoch checkpoints of a sharded job, written with ``torch.distributed.checkpoint`` (DCP).

DCP writes each rank's shards of the embedding tables and their fused optimizer state next to
the (replicated) dense weights and Adam state, so saving costs no gather and a checkpoint can be
loaded in place into the same sharded layout. The rest of a job's state (epoch, the batch
sampler's generator, torch's RNG, the MLflow run) is the same on every rank by construction
(batches are drawn from one seeded stream, see ``batches``), so rank 0 writes it once; a job can
therefore also resume on a different number of processes, DCP re-sharding the tables.

A checkpoint is written to a hidden partial directory and renamed once every rank has finished,
so a crash mid-write never leaves something that looks loadable.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

from rankforge.training.sharding import DistEnv

_NAME = re.compile(r"^epoch_(\d{4,})$")
EXTRA = "job_state.pt"


class Checkpointer:
    def __init__(self, directory: Path, keep: int, env: DistEnv) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.env = env

    def completed(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    def latest(self) -> Path | None:
        done = self.completed()
        return done[-1] if done else None

    def save(self, epoch: int, model: nn.Module, optimizer: KeyedOptimizer, extra: dict[str, Any]) -> Path:
        """Collective: every rank writes its part of epoch ``epoch``'s checkpoint."""
        target = self.directory / f"epoch_{epoch:04d}"
        partial = self.directory / f".epoch_{epoch:04d}.partial"
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=partial)
        dist.barrier()
        if self.env.is_main:
            torch.save(extra, partial / EXTRA)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
            for old in self.completed()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return target

    def update_state(self, path: Path, extra: dict[str, Any]) -> None:
        """Rank 0: replace the job state of finished checkpoint ``path`` (atomically)."""
        partial = path / f".{EXTRA}.partial"
        torch.save(extra, partial)
        partial.replace(path / EXTRA)

    def read_state(self, path: Path) -> dict[str, Any]:
        """The job state of checkpoint ``path`` (cheap: read before deciding to load weights)."""
        return torch.load(path / EXTRA, weights_only=True)

    def load(
        self, path: Path, model: nn.Module, optimizer: KeyedOptimizer, dense_optimizer: KeyedOptimizer
    ) -> None:
        """Load weights and optimizer state in place into the live (sharded) model and optimizers.

        The dense optimizer's state is created lazily by its first step, so it is materialised
        first (``init_state``); the weights that step may touch are overwritten by the load.
        """
        dense_optimizer.init_state()
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        dcp.load(state, checkpoint_id=path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])

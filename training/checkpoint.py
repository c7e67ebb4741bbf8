"""Per-epoch checkpoints of a sharded job, written with ``torch.distributed.checkpoint`` (DCP).

DCP writes each rank's shards of the embedding tables and their fused optimizer state next to
the (replicated) dense weights and Adam state, so saving costs no gather and a checkpoint can be
loaded in place into the same sharded layout. The rest of a job's state (epoch, the batch
sampler's generator, torch's RNG, the MLflow run) is the same on every rank by construction
(batches are drawn from one seeded stream, see ``batches``), so rank 0 writes it once; a job can
therefore also resume on a different number of processes, DCP re-sharding the tables.

A checkpoint is written to a hidden partial directory and renamed once every rank has finished,
so a crash mid-write never leaves something that looks loadable. Every file's SHA-256 is recorded
in ``CHECKSUMS.json``: a resumed job verifies the latest checkpoint first and, if a byte changed
or a file is short (a disk error, a copy cut off), names it and falls back to the newest intact
one -- never loading silently corrupted weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

from rankforge.errors import ConfigError
from rankforge.training.sharding import DistEnv, unwrap

_NAME = re.compile(r"^epoch_(\d{4,})$")
EXTRA = "job_state.pt"
CHECKSUMS = "CHECKSUMS.json"
log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path, only: str | None = None) -> None:
    """Record the SHA-256 of every file of a checkpoint (atomically); with ``only``, refresh that
    one file's entry and keep the others."""
    if only is not None:
        sums = json.loads((directory / CHECKSUMS).read_text())
        sums[only] = _sha256(directory / only)
    else:
        sums = {
            str(p.relative_to(directory)): _sha256(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS and not p.name.endswith(".partial")
        }
    partial = directory / f".{CHECKSUMS}.partial"
    partial.write_text(json.dumps(sums, indent=1, sort_keys=True))
    partial.replace(directory / CHECKSUMS)


def damage(directory: Path) -> str | None:
    """Why checkpoint ``directory`` cannot be trusted, or None when every file matches."""
    try:
        sums = json.loads((directory / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} is missing or unreadable"
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} does not match its checksum (changed or truncated)"
    return None


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
        return sorted(found, key=lambda p: int(p.name.removeprefix("epoch_")))  # names matched _NAME

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
        dcp.save(
            {"model": unwrap(model).state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=partial
        )
        dist.barrier()
        if self.env.is_main:
            torch.save(extra, partial / EXTRA)
            write_checksums(partial)
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
        write_checksums(path, only=EXTRA)  # the shards did not change: do not hash them again

    def latest_intact(self) -> Path | None:
        """The newest checkpoint whose files all match their checksums; damaged newer ones are
        named in the log and skipped. None when there is no checkpoint; a ``ConfigError`` naming
        each one when there are checkpoints but none is intact."""
        done = self.completed()
        problems: list[str] = []
        for path in reversed(done):
            why = damage(path)
            if why is None:
                if problems:
                    log.warning("resuming from %s: %s", path.name, "; ".join(problems))
                return path
            problems.append(f"{path} is damaged: {why}")
        if problems:
            raise ConfigError(
                f"no intact checkpoint to resume: {'; '.join(problems)} "
                "(delete them or set checkpoint.resume = false)"
            )
        return None

    def read_state(self, path: Path) -> dict[str, Any]:
        """The job state of checkpoint ``path`` (cheap: read before deciding to load weights)."""
        try:
            state = torch.load(path / EXTRA, weights_only=True)
        except Exception as exc:  # OSError, EOFError, UnpicklingError, RuntimeError of torch...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"cannot read {path / EXTRA}: {type(exc).__name__}: {first[:120]}") from exc
        if not isinstance(state, dict) or "epochs_done" not in state:
            raise ConfigError(f"cannot read {path / EXTRA}: not a job state (delete the checkpoint)")
        return state

    @property
    def best_weights(self) -> Path:
        """Where :meth:`save_weights` keeps the best epoch's weights (the plateau schedule)."""
        return self.directory / "best_weights"

    def save_weights(self, target: Path, model: nn.Module) -> None:
        """Collective: the model's weights alone (each rank its shards), replacing ``target``
        atomically; no optimizer state (restoring them keeps the optimizer's, as the SimpleX
        authors' trainer does)."""
        partial = target.with_name(f".{target.name}.partial")
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        dcp.save({"model": unwrap(model).state_dict()}, checkpoint_id=partial)
        dist.barrier()
        if self.env.is_main:
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        dist.barrier()

    def load_weights(self, source: Path, model: nn.Module) -> None:
        """Collective: load weights written by :meth:`save_weights` in place."""
        model = unwrap(model)
        state = {"model": model.state_dict()}
        dcp.load(state, checkpoint_id=source)
        model.load_state_dict(state["model"])

    def load(
        self, path: Path, model: nn.Module, optimizer: KeyedOptimizer, dense_optimizer: KeyedOptimizer
    ) -> None:
        """Load weights and optimizer state in place into the live (sharded) model and optimizers.

        The dense optimizer's state is created lazily by its first step, so it is materialised
        first (``init_state``); the weights that step may touch are overwritten by the load.
        """
        dense_optimizer.init_state()
        model = unwrap(model)
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        dcp.load(state, checkpoint_id=path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])

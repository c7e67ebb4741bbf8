"""The training loop: sharded model, per-rank batches, per-epoch checkpoints, exact resume.

One :class:`Trainer` per process; under ``torchrun`` every rank builds the same one and they meet
only inside DMP (embedding all-to-alls, DDP gradient all-reduce) and at checkpoints. Everything
random in a run comes from the seeded model init and the batch sampler's generator, and both are
in the checkpoint, so "crash and resume" reproduces the uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from tqdm import tqdm

from rankforge.errors import ConfigError
from rankforge.features.pipeline import PreparedData
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import Scoring
from rankforge.training.auction_batches import AuctionBatches
from rankforge.training.batches import (
    CascadeBatches,
    FeatureTables,
    NegativeSampler,
    RankingBatches,
    RetrievalBatches,
)
from rankforge.training.checkpoint import Checkpointer
from rankforge.training.config import TrainConfig
from rankforge.training.losses import resolve_objective
from rankforge.training.prefetch import prefetched
from rankforge.training.reference import fetch_bundle, open_reference
from rankforge.training.schedule import LearningRateSchedule
from rankforge.training.sharding import (
    DistEnv,
    build_optimizers,
    model_device,
    shard,
    unsharded_state_dict,
)
from rankforge.training.tasks import Batch, Model, build_model, make_task, task_inputs
from rankforge.training.warm_start import warm_start

#: Written into the checkpoint folder once a job has registered its model: the next scheduled run
#: then starts from scratch instead of "resuming" a finished job.
FINISHED = "FINISHED"
log = logging.getLogger(__name__)


def clip_gradients(parameters: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_``, except that gradients already within ``max_norm`` are left alone
    (torch scales them by a clamped 1.0 anyway: a pass over every table gradient per step)."""
    with_grads = [p for p in parameters if p.grad is not None]
    if not with_grads:
        return
    total = torch.nn.utils.get_total_norm([p.grad for p in with_grads])
    if float(total) > max_norm:
        torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, total)


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean over the epoch's examples, all ranks
    examples: int  # all ranks
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a job continued: its name, the epochs it had done and the number of
    processes that wrote it (0: a checkpoint from before this was recorded). Another world size
    than the job's own is fine: DCP re-shards the tables on load, and the batch order is one global
    order split across ranks, so the next epoch trains the examples it would have."""

    checkpoint: str
    epochs_done: int
    world_size: int

    def describe(self, world_size: int) -> str:
        by = f"{self.world_size} process(es)" if self.world_size else "an unknown number of processes"
        moved = "" if self.world_size == world_size else ", tables re-sharded"
        return (
            f"resumed from checkpoint {self.checkpoint} ({self.epochs_done} epoch(s) done), written by "
            f"{by}, continuing on {world_size}{moved}"
        )


def _describe_data(identity: dict) -> str:
    return (
        f"ids {identity.get('id_mapping')}, {identity.get('users', 0):,} users, "
        f"{identity.get('items', 0):,} items, {identity.get('train_events', 0):,} training events"
    )


class Trainer:
    """One training job's state on one rank: the model (wrapped in its task and sharded for
    ``env``), the optimizers, the schedule, the batches and the checkpoints.

    ``config`` names the model kind and objective (their declarations decide how the model is
    built and batched and how it scores), ``data`` is the prepared split, ``env`` the process's
    place in a ``torchrun`` launch (world size 1 without one). Usage, the same on every rank::

        trainer = Trainer(config, data, env)
        trainer.start(resume=True)          # continue an unfinished job in output_dir, if any
        trainer.fit(on_epoch_end)           # callback (EpochStats) -> stop?, on every rank
        model = trainer.selected_model()    # collective; the model on rank 0, None elsewhere
        trainer.mark_finished()

    Model selection is the caller's: it validates the unsharded model and hands the epoch's
    value to :meth:`keep_if_best`, which keeps the best weights for :meth:`selected_model`.
    """

    def __init__(self, config: TrainConfig, data: PreparedData, env: DistEnv) -> None:
        self.config = config
        self.data = data
        self.env = env
        torch.manual_seed(config.seed)  # same dense init on every rank; DMP materialises tables from it
        self.tables = FeatureTables.build(data)
        kind = config.model.declared
        objective = config.objective
        if objective is None:  # the config requires one for every trained kind
            raise ConfigError(f"model kind {kind.name!r} is not trained: nothing for a Trainer to do")
        loss = resolve_objective(objective.name, objective.params, kind.objective_kinds)
        # The objective declares the similarity it trains with; the model keeps it from here on.
        self.scoring = Scoring.of(loss)
        model = build_model(
            config.model, data, device=model_device(config.optimizer, env), scoring=self.scoring
        )
        task = make_task(model, loss, kind.batching, config.optimizer.embedding_l2)
        self.module = shard(task, config.sharding, config.optimizer, env)
        self.optimizer, self._dense_optimizer = build_optimizers(self.module, config.optimizer)
        self._keys = (model.user_keys, model.item_keys) if isinstance(model, RetrievalModel) else None
        # Per-example negatives against the whole item table when the model exposes it and a
        # batch's 1 + N candidates per example would touch most of the catalogue anyway.
        self._over_catalogue = (
            isinstance(model, RetrievalModel)
            and model.item_table() is not None
            and config.training.batch_size // env.world_size * (1 + config.negatives.count) >= data.n_items
        )
        self.reference = open_reference(
            objective.reference,
            data,
            self.tables,
            config.output_dir / f"reference_rank{env.rank}",
        )
        self.batches = self._batches()
        self.schedule = LearningRateSchedule(
            self.optimizer,
            config.optimizer.schedule,
            total_steps=len(self.batches) * config.training.epochs,
            warmup_steps=config.optimizer.warmup_steps,
            plateau_factor=config.optimizer.plateau_factor,
            min_lr=config.optimizer.min_lr,
        )
        # parameters whose gradient norm is clipped: every one with a .grad (fused tables have none)
        self._clipped = [p for p in self.module.parameters() if p.requires_grad]
        self.checkpointer = Checkpointer(config.output_dir / "checkpoints", config.checkpoint.keep, env)
        self.epochs_done = 0
        self.history: list[EpochStats] = []
        self.run_id: str | None = None  # the MLflow run, carried across restarts
        # model selection on the validation split (see pipelines.train)
        self.best_epoch = 0
        self.best_value = float("-inf")
        self.validated_epoch = 0  # the last epoch model selection scored (rank 0)
        self.best_minutes = 0.0  # the job's wall time when the best epoch had been scored
        self.stopped_early = False
        # plateau schedule: the best weights are restored before the next epoch trains
        self.restore_pending = False
        self.warm_rows: dict[str, int] = {}  # rows copied by training.warm_start, per id space
        self.resumed_from: Resumed | None = None  # set by start() when it continued a checkpoint

    def _batches(self) -> RetrievalBatches | RankingBatches | CascadeBatches | AuctionBatches:
        c = self.config
        sampler = NegativeSampler(
            self.tables.item_events,
            c.negatives.distribution,
            c.negatives.popularity_power,
            c.negatives.uniform_share,
        )
        common = dict(
            batch_size=c.training.batch_size,
            rank=self.env.rank,
            world_size=self.env.world_size,
            seed=c.seed,
        )
        batching = c.model.declared.batching
        if batching == "cascade":
            return CascadeBatches(self.data, self.tables, sampler, c.negatives.count, **common)
        if batching == "auction":
            if self.data.auctions is None:
                raise ConfigError("model kind 'auction' needs the data's auctions (pipelines.auction_data)")
            return AuctionBatches(self.data.auctions.train, self.tables, **common, teacher=self.reference)
        if batching == "retrieval":
            assert self._keys is not None
            return RetrievalBatches(
                self.data,
                self.tables,
                sampler,
                c.negatives.count,
                c.negatives.shared,
                **common,
                user_keys=self._keys[0],
                item_keys=self._keys[1],
                over_catalogue=self._over_catalogue,
                exclude=c.negatives.exclude,
            )
        return RankingBatches(
            self.data, self.tables, sampler, c.negatives.count, **common, reference=self.reference
        )

    # -- checkpoint / resume -------------------------------------------------------------------

    def job_state(self) -> dict[str, Any]:
        """What a checkpoint records beside the weights to resume this job exactly (epochs done,
        the config's fingerprint, the batch order and RNG, the run id, the loss history, the
        selection and the schedule state)."""
        return {
            "epochs_done": self.epochs_done,
            "fingerprint": self.config.fingerprint(),
            "data": self.data_identity(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "run_id": self.run_id or "",
            "history": [[s.epoch, s.loss, s.examples, s.seconds] for s in self.history],
            "best": [self.best_epoch, self.best_value, int(self.stopped_early), self.best_minutes],
            "schedule": self.schedule.state_dict(),
            "restore_pending": int(self.restore_pending),
            "world_size": self.env.world_size,
        }

    def start(self, resume: bool = True) -> bool:
        """Continue from the last checkpoint of an unfinished job in ``output_dir``; True if it did.

        Without ``resume``, or when the job there had finished (a scheduled re-run trains anew),
        the old checkpoints are cleared; a checkpoint from a job with a different configuration
        is refused rather than silently mixed in. Collective.
        """
        directory = self.checkpointer.directory
        if not resume or (directory / FINISHED).is_file():
            dist.barrier()
            if self.env.is_main:
                shutil.rmtree(directory, ignore_errors=True)
            dist.barrier()
            self._warm_start()
            return False
        latest = self.checkpointer.latest_intact()
        if latest is None:
            self._warm_start()
            return False
        state = self.checkpointer.read_state(latest)
        if state["fingerprint"] != self.config.fingerprint():
            raise ConfigError(
                f"checkpoint {latest} was written by a job with a different configuration; use another "
                "output_dir, delete it, or set checkpoint.resume = false"
            )
        written_on = state.get("data")  # absent from checkpoints written before it was recorded
        if written_on is not None and written_on != self.data_identity():
            raise ConfigError(
                f"checkpoint {latest} was written on other data ({_describe_data(written_on)}) than "
                f"this job's ({_describe_data(self.data_identity())}): the tables' rows mean other "
                "ids; use another output_dir, delete it, or set checkpoint.resume = false"
            )
        try:
            self.checkpointer.load(latest, self.module, self.optimizer, self._dense_optimizer)
        except (CheckpointException, RuntimeError, ValueError, KeyError) as exc:  # shapes or keys that differ
            # DCP reports each rank's traceback: its last line is the cause (a size mismatch)
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
            raise ConfigError(
                f"checkpoint {latest} does not fit this job's model ({cause[:200]}); use another "
                "output_dir, delete it, or set checkpoint.resume = false"
            ) from None
        self.epochs_done = int(state["epochs_done"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        self.run_id = state["run_id"] or None
        self.history = [EpochStats(int(e), float(lo), int(n), float(s)) for e, lo, n, s in state["history"]]
        best_epoch, best_value, stopped, *minutes = state.get("best", [0, float("-inf"), 0])
        self.best_epoch, self.best_value, self.stopped_early = (
            int(best_epoch),
            float(best_value),
            bool(stopped),
        )
        self.best_minutes = float(minutes[0]) if minutes else 0.0
        self.schedule.load_state_dict(state.get("schedule", {}))
        self.restore_pending = bool(state.get("restore_pending", 0))
        self.resumed_from = Resumed(latest.name, self.epochs_done, int(state.get("world_size", 0)))
        return True

    def data_identity(self) -> dict[str, int | str]:
        """What a checkpoint must have been trained on to resume: the id mapping (which raw id
        each table row is) and the number of training events."""
        return {
            "id_mapping": self.data.mapping.digest(),
            "users": self.data.n_users,
            "items": self.data.n_items,
            "train_events": self.data.train_events.height,
        }

    def _warm_start(self) -> None:
        """A fresh job starts from ``training.warm_start``'s weights when one is named (a resumed
        job's checkpoint already holds them)."""
        spec = self.config.training.warm_start
        if spec is None:
            return
        folder = self.config.output_dir / f"warm_start_rank{self.env.rank}"
        bundle = fetch_bundle(spec, folder, "training.warm_start")
        self.warm_rows = warm_start(self.module, bundle, self.data.mapping, self.data.vocabularies)

    def mark_finished(self) -> None:
        dist.barrier()
        if self.env.is_main:
            self.checkpointer.directory.mkdir(parents=True, exist_ok=True)
            (self.checkpointer.directory / FINISHED).write_text(f"{self.epochs_done}\n")
        dist.barrier()

    # -- training --------------------------------------------------------------------------------

    def train_epoch(self) -> EpochStats:
        """One pass over this rank's batches (after a plateau restore, from the best weights);
        returns the mean loss, examples per second and wall seconds."""
        if self.restore_pending:  # plateau: continue from the best weights at the reduced rate
            self.checkpointer.load_weights(self.checkpointer.best_weights, self.module)
            self.restore_pending = False
        self.module.train()
        epoch = self.epochs_done + 1
        totals = torch.zeros(2, dtype=torch.float64)  # sum of per-example loss, examples (this rank)
        start = time.perf_counter()
        bar = tqdm(
            total=len(self.batches),
            desc=f"epoch {epoch}/{self.config.training.epochs}",
            unit="batch",
            leave=False,
            # rank 0 on a terminal only (a log gets one line per epoch from the job instead);
            # not passing `disable` there lets tqdm's TQDM_DISABLE=1 switch it off
            **({} if self.env.is_main and sys.stderr.isatty() else {"disable": True}),
        )
        step = self.epochs_done * len(self.batches)
        drawn: Iterable[Batch] = self.batches
        for batch in prefetched(drawn):
            self.schedule.set(step)
            step += 1
            batch = batch.to(self.env.device)
            loss = self.module(*task_inputs(batch))
            self.optimizer.zero_grad()
            loss.backward()
            if self.config.optimizer.max_grad_norm is not None:
                clip_gradients(self._clipped, self.config.optimizer.max_grad_norm)
            self.optimizer.step()
            value = float(loss.detach())
            totals += torch.tensor([value * batch.size, batch.size], dtype=torch.float64)
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(
                loss=f"{value:.4f}", ex_s=f"{totals[1].item() * self.env.world_size / elapsed:.0f}"
            )
        bar.close()
        reduced = totals.to(self.env.device)
        dist.all_reduce(reduced)
        loss_sum, examples = reduced.tolist()
        return EpochStats(epoch, loss_sum / max(examples, 1.0), int(examples), time.perf_counter() - start)

    def fit(self, on_epoch_end: Callable[[EpochStats], bool | None] | None = None) -> list[EpochStats]:
        """Train the remaining epochs; a checkpoint is written every ``checkpoint.every`` epochs
        (and after the last) before ``on_epoch_end`` sees the epoch.

        ``on_epoch_end`` may score the epoch (:meth:`keep_if_best`) and returns True to stop early
        (rank 0 decides, every rank follows); its outcome is then written into that epoch's
        checkpoint state. Under the plateau schedule an improved epoch's weights are kept as the
        best snapshot and a validated epoch that did not improve lowers the rate and restores that
        snapshot before the next epoch."""
        every = self.config.checkpoint.every
        while self.epochs_done < self.config.training.epochs and not self.stopped_early:
            stats = self.train_epoch()
            self.epochs_done = stats.epoch
            self.history.append(stats)
            path = None
            if self.epochs_done % every == 0 or self.epochs_done == self.config.training.epochs:
                path = self.checkpointer.save(self.epochs_done, self.module, self.optimizer, self.job_state())
            if on_epoch_end is None:
                continue
            stop = bool(on_epoch_end(stats))
            validated = self.validated_epoch == stats.epoch
            improved = validated and self.best_epoch == stats.epoch
            flags = torch.tensor([int(stop), int(validated), int(improved)], device=self.env.device)
            dist.broadcast(flags, src=0)
            stop, validated, improved = (bool(f) for f in flags.tolist())
            self.stopped_early = stop
            if self.schedule.kind == "plateau" and validated:
                if improved:
                    self.checkpointer.save_weights(self.checkpointer.best_weights, self.module)
                elif not stop:
                    rate = self.schedule.reduce()
                    self.restore_pending = True
                    if self.env.is_main:
                        log.info(
                            "epoch %d did not improve: learning rate %.3g, best weights restored",
                            stats.epoch,
                            rate,
                        )
            if path is not None and self.env.is_main:  # what selection decided belongs to this checkpoint
                self.checkpointer.update_state(path, self.job_state())
        return self.history

    @property
    def best_path(self) -> Path:
        """The selected epoch's unsharded weights (rank 0), beside the checkpoints."""
        return self.checkpointer.directory / "best_model.pt"

    def keep_if_best(self, model: Model, epoch: int, value: float, minutes: float = 0.0) -> bool:
        """Rank 0: record that ``epoch`` was scored ``value`` at ``minutes`` of the job's wall
        time, and remember ``model`` as the best so far if ``value`` beats the best; True if so."""
        self.validated_epoch = epoch
        if not value > self.best_value:
            return False
        self.best_epoch, self.best_value, self.best_minutes = epoch, value, minutes
        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.best_path.with_suffix(".partial")
        torch.save(model.state_dict(), partial)
        partial.replace(self.best_path)
        return True

    # -- export ----------------------------------------------------------------------------------

    def unsharded_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's full state dict (tables gathered) on rank 0, ``None`` elsewhere; collective."""
        full = unsharded_state_dict(self.module, self.env)
        if full is None:
            return None
        return {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}

    def unsharded_model(self) -> Model | None:
        """A plain CPU model with the trained weights on rank 0 (for evaluation and ONNX export)."""
        state = self.unsharded_state_dict()
        if state is None:
            return None
        with torch.random.fork_rng(devices=[]):  # building a model draws init weights: keep the stream
            model = build_model(
                self.config.model, self.data, device=torch.device("cpu"), scoring=self.scoring
            )
        model.load_state_dict(state)
        return model.eval()

    def selected_model(self) -> Model | None:
        """The model to export and test (collective): the best validation epoch's weights when
        model selection ran, else the last epoch's; ``None`` on ranks other than 0."""
        model = self.unsharded_model()
        if model is not None and self.best_epoch > 0 and self.best_path.is_file():
            model.load_state_dict(torch.load(self.best_path, weights_only=True))
        return model

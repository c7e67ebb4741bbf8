"""The batch training job: config in, trained + tracked + registered model out.

``run_training`` is what ``rankforge train`` and the demo job call. Every rank of a ``torchrun``
launch calls it; they all train, and rank 0 alone talks to MLflow, validates, exports the ONNX
bundle and registers it. A job that dies is started again with the same config and continues
from its last epoch checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rankforge.bundles.ann_index import AnnIndex, ServedRecall, ServedRecallCheck
from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle
from rankforge.bundles.registry import BUNDLE_ARTIFACT, RegisteredModel, log_and_register
from rankforge.errors import ConfigError
from rankforge.features.coverage import Coverage
from rankforge.features.pipeline import PreparedData, prepare
from rankforge.models.cascade import CascadeModel
from rankforge.models.popularity import MostPopular
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.phase_clock import PhaseClock
from rankforge.pipelines.auction_data import with_auctions
from rankforge.settings import Settings, configure_mlflow, metric_name
from rankforge.training.allocator import reuse_large_allocations
from rankforge.training.batches import FeatureTables
from rankforge.training.config import TrainConfig
from rankforge.training.sharding import (
    DistEnv,
    embedding_bytes_per_rank,
    init_distributed,
    shutdown_distributed,
)
from rankforge.training.trainer import EpochStats, Trainer
from rankforge.training.validation import Split, retrieval_validation, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """On rank 0 everything is filled in; other ranks get the bundle dir and epoch losses only."""

    registered: RegisteredModel | None
    bundle_dir: Path
    metrics: dict[str, float]
    run_id: str | None
    epochs: list[EpochStats] = field(default_factory=list)
    stages: list[RegisteredModel] = field(default_factory=list)  # every registered model (2 for a cascade)
    # the job's wall minutes when the selected epoch had been validated (kept out of the bundle's
    # metrics: a rerun of the same config must export the same bundle)
    best_epoch_minutes: float | None = None
    # which test events the metrics scored and why the others were not (features.coverage)
    coverage: Coverage | None = None
    # wall seconds of the job's phases (prepare, set-up, epochs, test + export + register)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def job_seconds_metrics(clock: PhaseClock) -> dict[str, float]:
    """A job's phase times as MLflow metrics (``job_seconds_epochs``, ...)."""
    return {
        f"job_seconds_{phase.replace(' + ', '_').replace('-', '_')}": s for phase, s in clock.seconds.items()
    }


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.embedding_dim": "32", ...}`` for MLflow params."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


#: What the end of a job (test scoring aside) takes at most: gathering, ONNX export, registering.
EXPORT_SECONDS = 60.0


def selection_value(scores: dict[str, float], metric: str, higher_is_better: bool = True) -> float:
    """The validation number model selection maximises (a lower-is-better metric, negated); one
    the validation did not report (e.g. GAUC without users of both labels) is an error naming
    what it did report."""
    if metric not in scores:
        raise ConfigError(f"training.selection_metric {metric!r} is not among {sorted(scores)}")
    return scores[metric] if higher_is_better else -scores[metric]


def epoch_line(stats: EpochStats, config: TrainConfig, scores: dict[str, float], best: bool) -> str:
    """One line per epoch (the job's curve in its log): loss, speed and, when the epoch was
    validated, the selection metric and whether it is the best so far."""
    line = (
        f"epoch {stats.epoch}/{config.training.epochs}: loss {stats.loss:.4f}, "
        f"{stats.examples_per_second:,.0f} examples/s, {stats.seconds:.1f} s"
    )
    name = config.selection[0]
    if name in scores:
        line += f"; validation {name} {scores[name]:.4f}" + (" (best)" if best else "")
    return line


def _is_first_version(name: str) -> bool:
    try:
        return not MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return True


def run_name(config: TrainConfig) -> str:
    """What a run is, readable in the MLflow UI: model kind, objective and data, e.g.
    ``simplex ccl lightgcn:gowalla``."""
    data: str = config.data.source
    if config.data.path is not None:
        data += f":{config.data.path.stem if config.data.path.suffix else config.data.path.name}"
    objective = config.objective.name if config.objective is not None else "counted"
    return f"{config.model.kind} {objective} {data}"


def _start_run(run_id: str | None, name: str) -> mlflow.ActiveRun:
    """Resume the interrupted job's run if this store knows it, else start a new one."""
    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except MlflowException:
            pass
    return mlflow.start_run(run_name=name)


def _log_job_inputs(config: TrainConfig, data: PreparedData, env: DistEnv | None, resumed_at: int) -> None:
    params = flatten(config.model_dump(mode="json", exclude={"source_path"}))
    params.update(
        {
            "world_size": str(env.world_size if env is not None else 1),
            "device": env.device.type if env is not None else "cpu",
            "torch_threads": str(torch.get_num_threads()),
        }
    )
    run = mlflow.active_run()
    assert run is not None
    logged = run.data.params  # a resumed run keeps its params; MLflow refuses to re-log them
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.set_tag("rankforge.job", "train")
    mlflow.set_tag("rankforge.resumed_at_epoch", str(resumed_at))
    if config.source_path is not None:
        mlflow.log_artifact(str(config.source_path), "config")
    mlflow.log_dict(config.model_dump(mode="json", exclude={"source_path"}), "config/resolved.json")
    for split, coverage in data.coverage.items():
        mlflow.log_metrics(coverage.metrics(split))


def _log_starting_points(trainer: Trainer) -> None:
    """What the job trains against and starts from: the reference model's coverage of this data
    (Confidence Ranking) and the rows a warm start copied, so a run shows how much it inherited."""
    coverage = getattr(trainer.reference, "coverage", None)
    if coverage is not None:
        mlflow.log_metrics(coverage())
    if trainer.warm_rows:
        mlflow.log_metrics({f"warm_start_{space}": float(n) for space, n in trainer.warm_rows.items()})


def _served_recall(model: RetrievalModel, data: PreparedData, tables: FeatureTables) -> ServedRecallCheck:
    """How the exporter measures a candidate ANN index: Recall@k of held-out users (the
    validation split, so no decision reads the test set; the test split when there is none)
    through the index, against exact search, each scored with the model's scoring function."""

    def check(index: AnnIndex, k: int) -> ServedRecall:
        split: Split = "validation" if data.has_validation else "test"
        exact = retrieval_validation(model, data, tables, split, ks=(k,))
        ann = retrieval_validation(model, data, tables, split, ks=(k,), search=index.search)
        name = f"recall@{k}"
        return ServedRecall(split, k, ann.get(name, 0.0), exact.get(name, 0.0))

    return check


def _export(
    model: RetrievalModel | RankingModel,
    data: PreparedData,
    config: TrainConfig,
    metrics: dict[str, float],
    directory: Path,
    tables: FeatureTables,
) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    if isinstance(model, RetrievalModel):
        build_retrieval_bundle(
            model, data, str(directory), metrics, config.serving_index, _served_recall(model, data, tables)
        )
    else:
        build_ranker_bundle(model, data, str(directory), metrics)
    return directory


@dataclass(frozen=True)
class Stage:
    """One servable model of a job: the model itself, or one stage of a cascade."""

    name: str  # registered model name
    model: RetrievalModel | RankingModel
    artifact_path: str
    metrics: dict[str, float]


def servable_stages(
    model: RetrievalModel | RankingModel | CascadeModel, config: TrainConfig, metrics: dict[str, float]
) -> list[Stage]:
    """A cascade is served as its two stages, each registered under its own name."""
    if not isinstance(model, CascadeModel):
        return [Stage(config.registered_model, model, BUNDLE_ARTIFACT, metrics)]
    shared = {k: v for k, v in metrics.items() if not k.startswith(("retrieval_", "ranker_"))}

    def of(prefix: str) -> dict[str, float]:
        return {**shared, **{k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}}

    base = config.registered_model
    return [
        Stage(f"{base}-retrieval", model.retrieval, f"{BUNDLE_ARTIFACT}_retrieval", of("retrieval_")),
        Stage(f"{base}-ranker", model.ranker, f"{BUNDLE_ARTIFACT}_ranker", of("ranker_")),
    ]


def publish(
    model: RetrievalModel | RankingModel | CascadeModel,
    data: PreparedData,
    config: TrainConfig,
    metrics: dict[str, float],
    bundle_dir: Path,
    tables: FeatureTables,
) -> list[RegisteredModel]:
    """Export every servable stage to a bundle and log it to the active run: registered as a new
    version (the model's first becomes ``champion``), or as run artifacts only. ``tables``: the
    job's feature tables, which the export's served-recall check scores held-out users with."""
    registered: list[RegisteredModel] = []
    stages = servable_stages(model, config, metrics)
    for stage in stages:
        directory = bundle_dir if len(stages) == 1 else bundle_dir / stage.artifact_path
        _export(stage.model, data, config, stage.metrics, directory, tables)
        if config.mlflow.register_model:
            alias = config.mlflow.alias if _is_first_version(stage.name) else None
            registered.append(log_and_register(directory, stage.name, alias, stage.artifact_path))
        else:
            mlflow.log_artifacts(str(directory), stage.artifact_path)
    return registered


def run_counting(config: TrainConfig, data: PreparedData) -> TrainResult:
    """An untrained model (most popular items): counted from the training events, tested once,
    exported, tracked and registered like a trained one."""
    tables = FeatureTables.build(data)
    model = MostPopular(tables.item_events)
    configure_mlflow(Settings.from_env(), config.experiment)
    with mlflow.start_run(run_name=run_name(config)) as run:
        _log_job_inputs(config, data, None, 0)
        metrics = validate(model, data, tables, split="test")
        mlflow.log_metrics({f"test_{metric_name(k)}": v for k, v in metrics.items()})
        bundle_dir = config.output_dir / "bundle"
        registered = publish(model, data, config, metrics, bundle_dir, tables)
    return TrainResult(
        registered[0] if registered else None,
        bundle_dir,
        metrics,
        run.info.run_id,
        [],
        registered,
        coverage=data.coverage.get("test"),
    )


@dataclass
class EpochEnd:
    """What the trainer calls after each epoch (on every rank; rank 0 alone acts): log the epoch;
    with a validation split, score it there every ``validate_every`` epochs and on the last, keep
    the best weights, and say whether to stop (no improvement for ``patience`` epochs, or the time
    budget would not hold one more epoch, its validation and the job's end)."""

    config: TrainConfig
    data: PreparedData
    trainer: Trainer
    env: DistEnv
    started: float  # time.monotonic() at the job's start

    def __call__(self, stats: EpochStats) -> bool:
        validating = self.data.has_validation and (
            stats.epoch % self.config.training.validate_every == 0
            or stats.epoch == self.config.training.epochs
        )
        # collective: every rank gathers, rank 0 receives
        model = self.trainer.unsharded_model() if validating else None
        if not self.env.is_main:
            return False
        validation_started = time.monotonic()
        scores = self._validate(model, stats.epoch) if model is not None else {}
        validation_seconds = time.monotonic() - validation_started
        print(
            epoch_line(stats, self.config, scores, self.trainer.best_epoch == stats.epoch),
            file=sys.stderr,
            flush=True,
        )
        metrics = {
            "train_loss": stats.loss,
            "examples_per_second": stats.examples_per_second,
            "epoch_seconds": stats.seconds,
            **{f"val_{metric_name(k)}": v for k, v in scores.items()},
        }
        mlflow.log_metrics(metrics, step=stats.epoch)
        return self._out_of_patience(stats.epoch, validated=model is not None) or self._out_of_time(
            stats.seconds, validation_seconds
        )

    def _validate(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        scores = validate(model, self.data, self.trainer.tables, split="validation")
        if scores:  # e.g. a validation split with a single label has no ranking metrics
            value = selection_value(scores, *self.config.selection)
            minutes = (time.monotonic() - self.started) / 60.0
            self.trainer.keep_if_best(model, epoch, value, minutes)
        return scores

    def _out_of_patience(self, epoch: int, validated: bool) -> bool:
        patience = self.config.training.patience
        return validated and patience is not None and epoch - self.trainer.best_epoch >= patience

    def _out_of_time(self, epoch_seconds: float, validation_seconds: float) -> bool:
        budget = self.config.training.time_budget_minutes
        if budget is None:
            return False
        # the next epoch, its validation and the final test (about one more validation)
        needed = epoch_seconds + 2.0 * validation_seconds + EXPORT_SECONDS
        return time.monotonic() - self.started + needed > budget * 60.0


def _test_and_publish(
    config: TrainConfig, data: PreparedData, trainer: Trainer, epochs: list[EpochStats]
) -> tuple[dict[str, float], list[RegisteredModel]]:
    """Rank 0, after training: score the test set once with the selected weights, log the
    selection, export the bundle and register it. Returns the metrics and the registered models
    (none on other ranks)."""
    model = trainer.selected_model()
    if model is None:
        return {}, []
    metrics = validate(model, data, trainer.tables, split="test")
    mlflow.log_metrics({f"test_{metric_name(k)}": v for k, v in metrics.items()})
    if data.has_validation:
        metrics["best_epoch"] = float(trainer.best_epoch)
        name, higher = config.selection
        metrics[f"best_val_{name}"] = trainer.best_value if higher else -trainer.best_value
        mlflow.log_metrics(
            {
                "best_epoch": trainer.best_epoch,
                "epochs_run": trainer.epochs_done,
                "best_epoch_minutes": trainer.best_minutes,
            }
        )
    if epochs:
        metrics["train_loss"] = epochs[-1].loss
    if config.model.declared.exports == "retrieval":
        metrics.update(_popularity_floor(config, data, trainer.tables, metrics))
    return metrics, publish(model, data, config, metrics, config.output_dir / "bundle", trainer.tables)


def _popularity_floor(
    config: TrainConfig, data: PreparedData, tables: FeatureTables, metrics: dict[str, float]
) -> dict[str, float]:
    """The most-popular-unseen-items baseline on the same test split (``popularity_recall@20``,
    ...), logged beside the model's numbers; a warning when the model does not beat it on the
    selection metric."""
    floor = validate(MostPopular(tables.item_events), data, tables, split="test")
    mlflow.log_metrics({f"test_popularity_{metric_name(k)}": v for k, v in floor.items()})
    name, higher = config.selection
    if name in floor and name in metrics:
        beaten = metrics[name] > floor[name] if higher else metrics[name] < floor[name]
        if not beaten:
            log.warning(
                "the model does not beat the popularity floor on test %s: %.4f vs %.4f (most popular "
                "unseen items); train longer, tune it, or serve popularity",
                name,
                metrics[name],
                floor[name],
            )
            mlflow.set_tag("rankforge.below_popularity_floor", name)
    return {f"popularity_{k}": v for k, v in floor.items()}


def _report_start(trainer: Trainer, env: DistEnv) -> None:
    """Say where the job starts -- the checkpoint it continued and how many processes wrote it --
    and each rank's share of the embedding tables (stderr and MLflow). A collective."""
    per_rank = embedding_bytes_per_rank(trainer.module, env)
    if not env.is_main:
        return
    if trainer.resumed_from is not None:
        line = trainer.resumed_from.describe(env.world_size)
        print(line, file=sys.stderr, flush=True)
        mlflow.set_tag("rankforge.resumed_from", line)
    shares = ", ".join(f"rank {r} {b / 2**20:.2f} MiB" for r, b in enumerate(per_rank))
    print(f"embedding tables on {env.world_size} process(es): {shares}", file=sys.stderr, flush=True)
    mlflow.log_metrics({f"embedding_mib_rank{r}": b / 2**20 for r, b in enumerate(per_rank)})


def run_training(config: TrainConfig) -> TrainResult:
    """Train (or finish training) the model of ``config``, log it to MLflow and register it."""
    started = time.monotonic()
    clock = PhaseClock()
    if config.training.threads is not None:
        torch.set_num_threads(config.training.threads)
    reuse_large_allocations()
    data = prepare(config.data)
    if config.auctions is not None:
        data = with_auctions(data, config.auctions, config.data)
    clock.lap("prepare")
    if not config.model.declared.trained:
        return run_counting(config, data)
    env = init_distributed()
    active = False
    try:
        trainer = Trainer(config, data, env)
        resumed = trainer.start(resume=config.checkpoint.resume)
        if env.is_main:
            configure_mlflow(Settings.from_env(), config.experiment)
            trainer.run_id = _start_run(trainer.run_id if resumed else None, run_name(config)).info.run_id
            active = True
            _log_job_inputs(config, data, env, trainer.epochs_done)
            _log_starting_points(trainer)
        _report_start(trainer, env)
        clock.lap("set-up")
        epochs = trainer.fit(EpochEnd(config, data, trainer, env, started))
        clock.lap("epochs")
        metrics, registered = _test_and_publish(config, data, trainer, epochs)
        trainer.mark_finished()
        clock.lap("test + export + register")
        if active:
            mlflow.log_metrics(job_seconds_metrics(clock))
            mlflow.end_run()
            active = False
        return TrainResult(
            registered[0] if registered else None,
            config.output_dir / "bundle",
            metrics,
            trainer.run_id,
            list(epochs),
            registered,
            trainer.best_minutes if data.has_validation and env.is_main else None,
            data.coverage.get("test"),
            clock.seconds,
        )
    finally:
        if active:
            mlflow.end_run(status="FAILED")
        shutdown_distributed(env)

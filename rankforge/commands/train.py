"""``rankforge train CONFIG``: the scheduled training job from the command line.

A thin wrapper over :func:`rankforge.pipelines.train.run_training`; launch it under ``torchrun``
for several processes (see ``infra/torchrun.sh``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rankforge.settings import Settings

if TYPE_CHECKING:
    from rankforge.pipelines.train import TrainResult
    from rankforge.training.config import TrainConfig


def _run(args: argparse.Namespace) -> int:
    from rankforge.pipelines.train import run_training  # torch/torchrec load only when training
    from rankforge.training.config import load_config

    config = load_config(args.config)
    result = run_training(config)
    if result.run_id is not None:  # rank 0
        print("\n".join(summary_lines(result, config)))
        uri = Settings.from_env().tracking_uri
        print(f"browse it: mlflow ui --backend-store-uri {uri}")
    return 0


def summary_lines(result: TrainResult, config: TrainConfig) -> list[str]:
    """What a finished job prints: the run, what was registered and where the bundle is; the test
    metrics, named as such, with how many held-out users/events they scored; the selected epoch;
    and the popularity floor when the model does not beat it."""
    registered = (
        ", ".join(
            f"{r.name} version {r.version}"
            + (" (identical model: not registered again)" if r.duplicate else "")
            for r in result.stages
        )
        if result.stages
        else "not registered"
    )
    lines = [f"run {result.run_id}: {registered}; bundle {result.bundle_dir}"]
    metrics = dict(result.metrics)
    best_epoch = metrics.pop("best_epoch", None)
    selected = {k: metrics.pop(k) for k in list(metrics) if k.startswith("best_val_")}
    train_loss = metrics.pop("train_loss", None)
    floor = {k: metrics.pop(k) for k in list(metrics) if k.startswith("popularity_")}
    test = ", ".join(f"test_{k}={v:.4f}" for k, v in sorted(metrics.items()))
    lines.append(test or "no test metrics")
    if result.coverage is not None:
        retrieval = config.model.declared.exports in ("retrieval", "cascade")
        lines.append(f"test coverage: {result.coverage.describe(retrieval)}")
    if best_epoch is not None:
        by = ", ".join(f"validation {k.removeprefix('best_val_')} {v:.4f}" for k, v in selected.items())
        epochs = len(result.epochs)
        lines.append(f"selected epoch {int(best_epoch)} of {epochs} ({by})")
    if train_loss is not None:
        lines.append(f"last train_loss={train_loss:.4f}")
    name, higher = config.selection
    if floor and name in metrics and f"popularity_{name}" in floor:
        shown = sorted({name, "recall@20", "ndcg@20"} & {k.removeprefix("popularity_") for k in floor})
        values = ", ".join(f"test_{k}={floor[f'popularity_{k}']:.4f}" for k in shown)
        model, base = metrics[name], floor[f"popularity_{name}"]
        beaten = model > base if higher else model < base
        verdict = "beaten" if beaten else f"NOT beaten on {name}: the model is no better than popularity"
        lines.append(f"popularity floor (most popular unseen items): {values}; {verdict}")
    if result.phase_seconds:
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.phase_seconds.items())
        lines.append(f"job time: {phases}")
    return lines


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train, track and register a model from a TOML/YAML config",
        description="Train a retrieval or ranking model (1..N processes via torchrun), log it to MLflow "
        "and register its ONNX bundle.",
    )
    parser.add_argument("config", help="training config (.toml, .yaml or .yml); see configs/")
    parser.set_defaults(func=_run)

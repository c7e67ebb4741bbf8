"""``rankforge train CONFIG``: the scheduled training job from the command line.

A thin wrapper over :func:`rankforge.pipelines.train.run_training`; launch it under ``torchrun``
for several processes (see ``infra/torchrun.sh``).
"""

from __future__ import annotations

import argparse

from rankforge.settings import Settings
from rankforge.training.config import load_config


def _run(args: argparse.Namespace) -> int:
    from rankforge.pipelines.train import run_training  # torch/torchrec load only when training

    config = load_config(args.config)
    result = run_training(config)
    if result.run_id is not None:  # rank 0
        registered = (
            ", ".join(
                f"{r.name} version {r.version}"
                + (" (identical model: not registered again)" if r.duplicate else "")
                for r in result.stages
            )
            if result.stages
            else "not registered"
        )
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
        print(f"run {result.run_id}: {registered}; bundle {result.bundle_dir}; {metrics}")
        uri = Settings.from_env().tracking_uri
        print(f"browse it: mlflow ui --backend-store-uri {uri}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train, track and register a model from a TOML/YAML config",
        description="Train a retrieval or ranking model (1..N processes via torchrun), log it to MLflow "
        "and register its ONNX bundle.",
    )
    parser.add_argument("config", help="training config (.toml, .yaml or .yml); see configs/")
    parser.set_defaults(func=_run)

"""Offline evaluation of one served model (registry URI or bundle path), tracked in MLflow."""

from __future__ import annotations

import mlflow
import polars as pl

from rankforge.bundles.registry import opened_bundle
from rankforge.features.pipeline import PreparedData
from rankforge.pipelines.ab_compare import (
    ITEM_RATE,
    ABConfig,
    ModelEvaluation,
    evaluate_bundle,
    metrics_with_intervals,
)


def run_evaluation(
    uri: str, data: PreparedData, log: pl.DataFrame, config: ABConfig | None = None
) -> ModelEvaluation:
    """Offline metrics and replay values of ``uri``, logged to one MLflow run (MLflow configured)."""
    config = config or ABConfig()
    with opened_bundle(uri) as bundle:
        evaluation = evaluate_bundle(bundle, data, log, config)
    evaluation.label = uri
    reward_model = config.reward_model or ("itself" if bundle.manifest.kind == "ranker" else ITEM_RATE)
    with mlflow.start_run(run_name=f"evaluate {uri}") as run:
        evaluation.run_id = run.info.run_id
        mlflow.set_tags({"rankforge.job": "evaluate", "model": uri})
        mlflow.log_params(
            {
                "kind": bundle.manifest.kind,
                "replay_events": log.height,
                "ks": ",".join(map(str, config.ks)),
                "reward_model": reward_model,
                "policy_temperature": config.policy_temperature,
            }
        )
        mlflow.log_metrics(metrics_with_intervals(evaluation))
        mlflow.log_metrics({f"coverage_{k}": float(v) for k, v in evaluation.notes.items()})
        mlflow.log_dict(evaluation.to_json(), "evaluation.json")
    return evaluation

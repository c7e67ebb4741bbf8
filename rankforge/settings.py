"""Where things live: one place for the locations every job and the server share.

Defaults are embedded and local (a SQLite MLflow store under ``./runs``, Redis on localhost); each
can be overridden by an environment variable, so a deployment points at real servers without code
changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str
    artifact_root: Path
    redis_url: str

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("RANKFORGE_HOME", "runs")).resolve()
        tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(
            home=home,
            tracking_uri=tracking,
            registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking,
            artifact_root=Path(os.environ.get("RANKFORGE_ARTIFACT_ROOT", home / "artifacts")).resolve(),
            redis_url=os.environ.get("RANKFORGE_REDIS_URL", "redis://127.0.0.1:6379/0"),
        )


def configure_mlflow(settings: Settings, experiment: str) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new).

    New experiments get an explicit artifact location under ``artifact_root``; otherwise MLflow
    would write ``./mlruns`` relative to whatever directory the job was started from.
    """
    import mlflow  # imported here: it takes seconds, and most CLI commands never need it

    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        location = None
        if settings.tracking_uri.startswith("sqlite:") or settings.tracking_uri.startswith("file:"):
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = (settings.artifact_root / experiment).as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id

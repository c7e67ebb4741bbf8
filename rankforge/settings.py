"""Where things live: one place for the locations every job and the server share.

Defaults are embedded and local (a SQLite MLflow store under ``./runs``, Redis on localhost); each
can be overridden by an environment variable, so a deployment points at real servers without code
changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rankforge.errors import ConfigError


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


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_store(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI (None for a server or another backend)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).expanduser()


def check_store(settings: Settings, expect_existing: bool = False) -> None:
    """A local SQLite store that is there when it must be (``expect_existing``: a command that
    reads registered models) and is a healthy SQLite database; a ``ConfigError`` in one line
    otherwise, instead of SQLAlchemy's tracebacks or an empty store silently created in its place."""
    import sqlite3

    path = sqlite_store(settings.tracking_uri)
    if path is None:
        return
    if not path.exists():
        if expect_existing:
            raise ConfigError(
                f"no MLflow store at {path}: nothing is registered there (train a model first, or point "
                "RANKFORGE_HOME / MLFLOW_TRACKING_URI at the store)"
            )
        return
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        raise ConfigError(
            f"the MLflow store {path} is empty (0 bytes): restore it, or delete it to start anew"
        )
    if header != SQLITE_HEADER:
        raise ConfigError(f"the MLflow store {path} is not an SQLite database (damaged?)")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise ConfigError(f"the MLflow store {path} is damaged: {str(verdict)[:160]}")


def configure_mlflow(settings: Settings, experiment: str, expect_existing: bool = False) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new).

    The store is checked first (:func:`check_store`). New experiments get an explicit artifact
    location under ``artifact_root``; otherwise MLflow would write ``./mlruns`` relative to
    whatever directory the job was started from.
    """
    import mlflow  # imported here: it takes seconds, and most CLI commands never need it

    check_store(settings, expect_existing)
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


def metric_name(name: str) -> str:
    """MLflow metric names cannot hold "@": ``recall@10`` is logged as ``recall_at_10``."""
    return name.replace("@", "_at_")

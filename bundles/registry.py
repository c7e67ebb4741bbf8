"""MLflow model registry: log a bundle as an ONNX-flavor model, register it, resolve aliases.

The main ONNX graph of a bundle (ranker, or the user tower for retrieval) is logged with MLflow's
ONNX flavor so MLflow tooling can load it; the whole bundle directory is logged next to it as
artifacts of the same logged model, so a registry alias resolves to everything the server needs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rankforge.bundles.bundle import Bundle, bundle_digest, load_bundle
from rankforge.bundles.pyfunc_model import BundleModel, signature_and_example
from rankforge.errors import ConfigError, DataError
from rankforge.features.feature_spec import DENSE_INPUT

MAIN_GRAPH = {"retrieval": "user_tower.onnx", "ranker": "ranker.onnx"}
BUNDLE_ARTIFACT = "bundle"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    run_id: str
    model_uri: str
    duplicate: bool = False  # the bundle was identical to this (existing) version: nothing registered


#: Version tags: the bundle's content digest (duplicates are not registered twice) and its data.
BUNDLE_DIGEST_TAG = "rankforge.bundle_sha256"
DATA_TAG = "rankforge.data"
ID_MAPPING_TAG = "rankforge.id_mapping"


ONNX_MODEL_TAG = "rankforge.onnx_model"


def onnx_example(bundle: Bundle) -> dict[str, np.ndarray]:
    """One row of the main graph's inputs (padding ids, zero dense features)."""
    m = bundle.manifest
    shapes = {s.name: s.max_len for s in bundle.inputs.sparse}
    graph = MAIN_GRAPH[m.kind]
    example = {}
    for name in m.inputs[graph]:
        if name == DENSE_INPUT:
            example[name] = np.zeros((1, len(m.dense_features)), dtype=np.float32)
        else:
            example[name] = np.full((1, shapes[name]), -1, dtype=np.int64)
    return example


def _requirements(*packages: str) -> list[str]:
    """Pinned requirements of a logged model, declared rather than inferred (MLflow's inference
    imports the model in a subprocess: 2-3 s per model)."""
    from importlib.metadata import version

    names = packages or ("mlflow", "onnxruntime", "polars", "numpy", "pandas")
    return [f"{p}=={version(p)}" for p in names]


def _identical_version(name: str, digest: str) -> RegisteredModel | None:
    """The latest version of ``name`` if its bundle has exactly this digest."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    if latest.tags.get(BUNDLE_DIGEST_TAG) != digest:
        return None
    return RegisteredModel(name, int(latest.version), latest.run_id, f"models:/{name}/{latest.version}", True)


def log_and_register(
    bundle_dir: str | Path,
    registered_name: str,
    alias: str | None = None,
    artifact_path: str = BUNDLE_ARTIFACT,
) -> RegisteredModel:
    """Inside an active run: log the bundle, register a new version, optionally set an alias.

    ``artifact_path`` lets one run register several bundles (a cascade's two stages); the version
    remembers it in its ``bundle_artifact`` tag, which :func:`download_bundle` follows.
    """
    bundle = load_bundle(bundle_dir)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    digest = bundle_digest(bundle.directory)
    same = _identical_version(registered_name, digest)
    if same is not None:  # a re-run that produced the very same model: no duplicate version
        mlflow.set_tag(f"rankforge.duplicate_of.{artifact_path}", same.model_uri)
        mlflow.log_artifacts(str(bundle.directory), artifact_path)
        return same
    main = onnx.load(str(bundle.path(MAIN_GRAPH[bundle.manifest.kind])))
    mlflow.log_artifacts(str(bundle.directory), artifact_path)
    prefix = "" if artifact_path == BUNDLE_ARTIFACT else f"{artifact_path}_"
    # The main graph as an ONNX-flavor model for ONNX tooling (CPU provider: this is a CPU build).
    onnx_info = mlflow.onnx.log_model(
        main,
        name=f"{prefix}onnx",
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
        input_example=onnx_example(bundle),
        metadata={"rankforge_kind": bundle.manifest.kind},
        pip_requirements=_requirements("mlflow", "onnx", "onnxruntime", "numpy"),
    )
    # The registered model: raw ids in, scores out (pipelines.pyfunc_model), as MLflow users expect.
    signature, example = signature_and_example(bundle)
    info = mlflow.pyfunc.log_model(
        name=f"{prefix}model",
        python_model=BundleModel(),
        artifacts={"bundle": str(bundle.directory)},
        signature=signature,
        input_example=example,
        registered_model_name=registered_name,
        pip_requirements=_requirements(),
        metadata={"rankforge_kind": bundle.manifest.kind, "bundle_artifact": artifact_path},
    )
    version = int(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(registered_name, str(version), "rankforge_kind", bundle.manifest.kind)
    client.set_model_version_tag(registered_name, str(version), "bundle_artifact", artifact_path)
    client.set_model_version_tag(registered_name, str(version), BUNDLE_DIGEST_TAG, digest)
    client.set_model_version_tag(registered_name, str(version), ONNX_MODEL_TAG, onnx_info.model_uri)
    fingerprint = bundle.manifest.data_fingerprint
    if fingerprint:
        client.set_model_version_tag(registered_name, str(version), DATA_TAG, fingerprint.get("source", ""))
        client.set_model_version_tag(
            registered_name, str(version), ID_MAPPING_TAG, fingerprint.get("id_mapping", "")
        )
    if alias:
        client.set_registered_model_alias(registered_name, alias, str(version))
    return RegisteredModel(registered_name, version, run.info.run_id, f"models:/{registered_name}/{version}")


def resolve(name: str, alias_or_version: str | int) -> RegisteredModel:
    """Find the version behind ``champion`` (or a version number), with a clear error if none."""
    client = MlflowClient()
    try:
        if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
            mv = client.get_model_version(name, str(alias_or_version))
        else:
            mv = client.get_model_version_by_alias(name, str(alias_or_version))
    except MlflowException as exc:
        raise ConfigError(f"no registered model {name!r} at {alias_or_version!r}: {exc.message}") from exc
    return RegisteredModel(name, int(mv.version), mv.run_id, f"models:/{name}/{mv.version}")


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias or version)."""
    if not uri.startswith("models:/"):
        raise ConfigError(f"not a registry URI (models:/name@alias or models:/name/version): {uri!r}")
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, ref = rest.split("@", 1)
    elif "/" in rest:
        name, ref = rest.rsplit("/", 1)
    else:
        raise ConfigError(f"registry URI names no alias or version: {uri!r}")
    if not name or not ref:
        raise ConfigError(f"bad registry URI {uri!r}")
    return name, ref


@contextmanager
def opened_bundle(uri_or_path: str | Path) -> Iterator[Bundle]:
    """A bundle for the length of a ``with`` block: a registry version is downloaded into a
    temporary folder that is removed afterwards (also when the block fails); a bundle directory
    is used where it is."""
    text = str(uri_or_path)
    if not text.startswith("models:/"):
        yield load_bundle(text)
        return
    folder = Path(tempfile.mkdtemp(prefix="rankforge-download-"))
    try:
        yield download_bundle(text, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def download_bundle(uri_or_path: str | Path, destination: str | Path | None = None) -> Bundle:
    """A bundle from a local directory or a ``models:/`` URI (downloaded from its run).

    The caller owns a download's folder (``destination``, or a new temporary one it must remove:
    prefer :func:`opened_bundle`); a download that fails leaves nothing behind."""
    text = str(uri_or_path)
    if not text.startswith("models:/"):
        return load_bundle(text)
    name, ref = parse_model_uri(text)
    registered = resolve(name, ref)
    tags = MlflowClient().get_model_version(name, str(registered.version)).tags
    artifact = run_artifact_path(tags.get("bundle_artifact", BUNDLE_ARTIFACT), f"{name}/{registered.version}")
    target = Path(destination) if destination else Path(tempfile.mkdtemp(prefix=f"rankforge-{name}-"))
    try:
        return _downloaded(name, registered, tags, artifact, target)
    except BaseException:
        if destination is None:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _downloaded(
    name: str, registered: RegisteredModel, tags: dict[str, str], artifact: str, target: Path
) -> Bundle:
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=registered.run_id, artifact_path=artifact, dst_path=str(target)
        )
    )
    if not local.resolve().is_relative_to(target.resolve()):
        raise DataError(f"{name}/{registered.version}: its bundle resolved outside the download folder")
    registered_digest = tags.get(BUNDLE_DIGEST_TAG)
    if registered_digest and bundle_digest(local) != registered_digest:
        raise DataError(
            f"{name}/{registered.version}: the downloaded bundle differs from the one registered "
            f"({BUNDLE_DIGEST_TAG} {registered_digest[:12]}...): its files changed after registration"
        )
    return load_bundle(local)


def run_artifact_path(path: str, version: str) -> str:
    """A registry tag's artifact path, accepted only if it names a folder *inside* the version's
    run: relative, no ``..``, no drive or scheme (a tag is data anyone with registry access can
    edit; following ``../../..`` would load whatever directory it reaches)."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith(("/", "\\")) or ":" in path or ".." in parts or "\\" in path:
        raise DataError(f"{version}: bundle_artifact {path[:80]!r} is not a path inside the run's artifacts")
    return path

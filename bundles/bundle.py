"""The model bundle: the directory a trained model is served from.

A bundle holds the ONNX graph(s), the id mapping that turns raw ids into embedding rows, and a
manifest naming every input, so the server needs nothing from the training code. It is what gets
logged to MLflow and what a registry alias resolves to.

Layout::

    manifest.json
    id_mapping/users.parquet, id_mapping/items.parquet
    retrieval:  user_tower.onnx, item_tower.onnx, item_embeddings.npy  ([n_items, d] float32)

A retrieval bundle's towers and item matrix are in the model's *scoring space* (see
``rankforge.models.scoring``): the inner product of a user-tower vector and an item row is the
model's score, whatever similarity it was trained with. ``manifest.scoring`` records which.
    ranker:     ranker.onnx
    vocabularies/{feature}.parquet  (declared categorical features: value -> index)
    weights.pt  (the torch state dict, for warm starts; not needed to serve)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from rankforge.errors import DataError
from rankforge.features.feature_spec import InputLayout, Side
from rankforge.features.id_mapping import IdMapping
from rankforge.models.scoring import Scoring

MANIFEST = "manifest.json"
#: The torch state dict the graphs were exported from: what ``training.warm_start`` starts from.
WEIGHTS = "weights.pt"
#: ``vocabularies/{feature}.parquet``: value -> index of each declared categorical feature.
VOCABULARIES = "vocabularies"
BundleKind = Literal["retrieval", "ranker"]
#: 2: inputs declared by the feature spec (``layout``) instead of fixed genre inputs.
FORMAT_VERSION = 2
#: Bounds of a manifest's sizes: a history longer than any log's, more rows than any table.
MAX_HISTORY_LEN = 100_000
MAX_ROWS = 1 << 40
FILES: dict[str, tuple[str, ...]] = {
    "retrieval": ("user_tower.onnx", "item_tower.onnx", "item_embeddings.npy"),
    "ranker": ("ranker.onnx",),
}


@dataclass(frozen=True)
class Manifest:
    kind: BundleKind
    inputs: dict[str, list[str]]  # graph file -> ONNX input names in order
    history_len: int
    # every model input (rankforge.features.feature_spec.InputLayout.to_dict): names, widths and
    # table sizes of the sparse inputs, the user and item dense features
    layout: dict = field(default_factory=dict)
    dense_features: list[str] = field(default_factory=list)
    n_users: int = 0
    n_items: int = 0
    # declared categorical feature -> digest of its vocabulary: its ids mean the same values only
    # where the digests agree (feature store, reference model)
    vocabularies: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    version: int = FORMAT_VERSION  # bundle format version
    # retrieval: {"similarity": "dot" | "cosine", "temperature": t}, already applied to the vectors
    scoring: dict[str, object] = field(default_factory=dict)
    # the data it was trained on: {"source": ..., "id_mapping": digest} (PreparedData.fingerprint)
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    # retrieval: the ANN index beside the exact vectors ({} = exact search), with its measured
    # recall against exact search (see serving.ann_index)
    index: dict[str, object] = field(default_factory=dict)
    # every other file of the bundle -> its SHA-256, checked at load: a byte changed after export
    # (a disk error, a copy cut off, an edit) refuses the bundle instead of serving wrong scores
    files: dict[str, str] = field(default_factory=dict)
    # the data config it was trained on, paths absolute (DataConfig.portable): what `materialize`
    # featurises for it when given no data config ({}: unknown, e.g. prepared out of core)
    data_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every field's type and range, checked once where the manifest is read: a hand-edited or
        damaged manifest is one ``DataError`` naming the field, never a traceback (nor a history
        length of 10**9 that the server would allocate per request)."""
        for name, most in (("history_len", MAX_HISTORY_LEN), ("n_users", MAX_ROWS), ("n_items", MAX_ROWS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
                raise DataError(
                    f"bundle manifest: {name} must be an integer in [0, {most}], got {str(value)[:40]!r}"
                )
        for name in ("layout", "scoring", "data_fingerprint", "index", "data_config"):
            if not isinstance(getattr(self, name), dict):
                raise DataError(
                    f"bundle manifest: {name} must be a mapping, got {type(getattr(self, name)).__name__}"
                )
        if not isinstance(self.inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
            for k, v in self.inputs.items()
        ):
            raise DataError("bundle manifest: inputs must map graph files to lists of input names")
        if not isinstance(self.dense_features, list) or not all(
            isinstance(n, str) for n in self.dense_features
        ):
            raise DataError("bundle manifest: dense_features must be a list of names")
        for name in ("vocabularies", "files"):
            mapping = getattr(self, name)
            if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
                raise DataError(f"bundle manifest: {name} must map names to digests (strings)")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in self.metrics.values()
        ):
            raise DataError("bundle manifest: metrics must map names to numbers")


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    return path


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its folder, its manifest as written, and the manifest's contracts parsed
    once (:func:`load_bundle`) into types: ``inputs`` (every model input, as the feature spec of
    its training data declared them) and, for retrieval, ``scoring`` (the similarity and
    temperature its vectors are already in)."""

    directory: Path
    manifest: Manifest
    inputs: InputLayout = field(default_factory=lambda: InputLayout((), (), ()))
    scoring: Scoring | None = None

    @classmethod
    def of(cls, directory: Path, manifest: Manifest) -> Bundle:
        """A bundle over ``manifest``, its contracts parsed (a malformed one is a ``DataError``)."""
        try:
            inputs = InputLayout.from_dict(manifest.layout) if manifest.layout else InputLayout((), (), ())
            scoring = Scoring.from_dict(manifest.scoring) if manifest.scoring else None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad bundle manifest {directory / MANIFEST}: {str(exc)[:160]}") from exc
        return cls(directory, manifest, inputs, scoring)

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def id_mapping(self) -> IdMapping:
        return IdMapping.load(self.directory / "id_mapping")

    def unmatched_feature(
        self, digests: Mapping[str, str | None], sides: tuple[Side, ...] = ("user", "item")
    ) -> tuple[str, str] | None:
        """The first declared feature of ``sides`` this model reads that a feature source lacks
        (``"missing"``) or holds in another vocabulary (``"vocabulary"``); None when all match.
        ``digests``: the source's feature -> vocabulary digest (a data set's, a feature version's).
        The one compatibility rule for the server, evaluation and reference models."""
        for side in sides:
            for s in self.inputs.declared(side):
                if s.name not in digests:
                    return s.name, "missing"
                if digests[s.name] != self.manifest.vocabularies.get(s.name):
                    return s.name, "vocabulary"
        return None

    def vocabulary(self, name: str) -> pl.DataFrame:
        """A declared feature's ``value -> index`` table (what its ids mean in this model)."""
        path = self.directory / VOCABULARIES / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"bundle {self.directory} has no vocabulary for feature {name!r}")
        return pl.read_parquet(path)

    def item_embeddings(self) -> np.ndarray:
        if self.manifest.kind != "retrieval":
            raise DataError(f"bundle {self.directory} is a {self.manifest.kind} bundle: no item embeddings")
        return np.load(self.path("item_embeddings.npy"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: str | Path) -> dict[str, str]:
    """SHA-256 of every file of a bundle but its manifest, by path relative to the bundle."""
    root = Path(directory)
    return {
        str(p.relative_to(root)): _sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def seal(directory: str | Path) -> None:
    """Record the digest of every file in the bundle's manifest (export does this last; a tool
    that rewrites a bundle's files on purpose seals it again)."""
    path = Path(directory) / MANIFEST
    raw = json.loads(path.read_text())
    raw["files"] = file_digests(directory)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True))


def _check_files(directory: Path, recorded: dict[str, str]) -> None:
    for name, expected in recorded.items():
        path = (directory / name).resolve()
        if not path.is_relative_to(directory.resolve()):
            raise DataError(f"bundle {directory}: manifest names a file outside it: {name[:80]!r}")
        if not path.is_file():
            raise DataError(f"bundle {directory} lacks {name!r}")
        if _sha256(path) != expected:
            raise DataError(
                f"bundle {directory}: {name} differs from the file exported with it (SHA-256 "
                f"{expected[:12]}...): changed or damaged after export"
            )


def bundle_digest(directory: str | Path) -> str:
    """SHA-256 of every file of a bundle (names and bytes): equal digests, identical models."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def load_bundle(directory: str | Path, expect: BundleKind | None = None) -> Bundle:
    """Open and check a bundle: missing files or a wrong kind fail here, not at first request."""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise DataError(f"not a model bundle (no {MANIFEST}): {d}")
    try:
        raw = json.loads((d / MANIFEST).read_text())
        if not isinstance(raw, dict) or raw.get("version", 1) != FORMAT_VERSION:
            found = raw.get("version", 1) if isinstance(raw, dict) else "?"
            raise DataError(
                f"bundle {d} has format {found}, this server reads format {FORMAT_VERSION}: export it again"
            )
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"bad bundle manifest {d / MANIFEST}: {exc}") from exc
    if manifest.kind not in FILES:
        raise DataError(f"bundle {d}: unknown kind {manifest.kind!r}")
    if expect is not None and manifest.kind != expect:
        raise DataError(f"bundle {d} is a {manifest.kind} bundle, expected {expect}")
    missing = [
        n
        for n in (*FILES[manifest.kind], "id_mapping/users.parquet", "id_mapping/items.parquet")
        if not (d / n).is_file()
    ]
    if missing:
        raise DataError(f"bundle {d} lacks {missing}")
    _check_files(d, manifest.files)
    return Bundle.of(d, manifest)

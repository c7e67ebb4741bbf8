"""Where a served model comes from, how to tell that it changed, and the hot swap when it does.

A source is a registry URI (``models:/rankforge-ranker@champion``: the version is what the alias
points at) or a bundle directory (the version is a fingerprint of its resolved path and files, so
repointing a ``current -> bundle-N`` symlink or rewriting the bundle counts as a new version).
A :class:`ModelWatcher` polls the sources and swaps in a fully loaded runtime; requests read the
reference once, so each one sees one consistent pair of models.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from rankforge.pipelines.registry import download_bundle, parse_model_uri, resolve
from rankforge.serving.bundle import FILES, MANIFEST, Bundle
from rankforge.serving.model_runtime import RankerRuntime, RetrievalRuntime, load_ranker, load_retrieval

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelSource:
    def __init__(self, spec: str | Path) -> None:
        self.spec = str(spec)
        self.is_registry = self.spec.startswith("models:/")
        if self.is_registry:
            self.name, self.ref = parse_model_uri(self.spec)

    def current_version(self) -> str:
        """Cheap: one registry lookup or a few ``stat`` calls."""
        if self.is_registry:
            registered = resolve(self.name, self.ref)
            return f"{registered.name}/{registered.version}"
        directory = Path(self.spec).resolve()
        digest = hashlib.sha256(str(directory).encode())
        for name in (MANIFEST, *sorted({f for files in FILES.values() for f in files})):
            path = directory / name
            if path.is_file():
                stat = path.stat()
                digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"{directory.name}@{digest.hexdigest()[:12]}"

    def load(self, version: str) -> Bundle:
        """The bundle of exactly ``version`` (never whatever the alias points at a moment later)."""
        if self.is_registry:
            return download_bundle(f"models:/{version}")
        return download_bundle(Path(self.spec).resolve())


@dataclass(frozen=True)
class ServingModels:
    retrieval: RetrievalRuntime
    ranker: RankerRuntime
    ad_ranker: RankerRuntime | None = None  # the Auction RPC's pCTR model, when configured


class _Tracked(Generic[T]):
    def __init__(self, source: ModelSource, loader: Callable[[Bundle, str], T]) -> None:
        self.source = source
        self.loader = loader

    def load(self, version: str | None = None) -> T:
        version = version or self.source.current_version()
        return self.loader(self.source.load(version), version)


class ModelWatcher:
    """Holds the live :class:`ServingModels` and refreshes them from their sources."""

    def __init__(
        self,
        retrieval: ModelSource,
        ranker: ModelSource,
        ort_threads: int = 1,
        on_swap: Callable[[ServingModels], None] | None = None,
        ad_ranker: ModelSource | None = None,
    ) -> None:
        self._retrieval = _Tracked(retrieval, lambda b, v: load_retrieval(b, v, ort_threads))
        self._ranker = _Tracked(ranker, lambda b, v: load_ranker(b, v, ort_threads))
        self._ad_ranker = (
            None if ad_ranker is None else _Tracked(ad_ranker, lambda b, v: load_ranker(b, v, ort_threads))
        )
        self._on_swap = on_swap
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.models = ServingModels(
            self._retrieval.load(),
            self._ranker.load(),
            None if self._ad_ranker is None else self._ad_ranker.load(),
        )

    def refresh(self) -> bool:
        """Load whichever model has a new version; returns whether anything was swapped.

        A bundle that fails to load is logged and skipped: the models being served stay.
        """
        with self._lock:
            current = self.models
            updated = current
            tracked_models: list[tuple[str, _Tracked, str]] = [
                ("retrieval", self._retrieval, current.retrieval.version),
                ("ranker", self._ranker, current.ranker.version),
            ]
            if self._ad_ranker is not None and current.ad_ranker is not None:
                tracked_models.append(("ad_ranker", self._ad_ranker, current.ad_ranker.version))
            for field, tracked, live in tracked_models:
                try:
                    version = tracked.source.current_version()
                    if version != live:
                        updated = replace(updated, **{field: tracked.load(version)})
                        log.info("loaded %s model %s (was %s)", field, version, live)
                except Exception:
                    log.exception("refreshing the %s model from %s failed", field, tracked.source.spec)
            if updated is current:
                return False
            self.models = updated  # one reference assignment: atomic for concurrent readers
        if self._on_swap is not None:
            self._on_swap(updated)
        return True

    def start(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._poll, args=(interval_s,), name="rankforge-model-refresh", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.refresh()

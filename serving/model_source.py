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
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from rankforge.bundles.bundle import FILES, MANIFEST, Bundle
from rankforge.bundles.registry import download_bundle, parse_model_uri, resolve
from rankforge.bundles.runtime import RankerRuntime, RetrievalRuntime, load_ranker, load_retrieval

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelSource:
    """Where a served model comes from: a bundle directory or a registry URI
    (``models:/name/3``, ``models:/name@champion``).

    :meth:`current_version` names what the source holds now (cheaply, polled by the watcher),
    :meth:`load` opens exactly that version (a registry bundle is downloaded, digests checked)
    and :meth:`discard` removes a loaded bundle's download once it is no longer served.
    """

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
        """The bundle of exactly ``version`` (never whatever the alias points at a moment later).
        A registry version is downloaded into a fresh temporary directory, removed again if the
        download fails."""
        if not self.is_registry:
            return download_bundle(Path(self.spec).resolve())
        target = Path(tempfile.mkdtemp(prefix="rankforge-serving-"))
        try:
            return download_bundle(f"models:/{version}", target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def discard(self, bundle: Bundle) -> None:
        """Remove a downloaded bundle's temporary files (registry sources only)."""
        if self.is_registry:
            root = bundle.directory
            while root.parent != root and not root.name.startswith("rankforge-serving-"):
                root = root.parent
            if root.name.startswith("rankforge-serving-"):
                shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class ServingModels:
    """The models one request is answered with (taken once per request, swapped as a whole)."""

    retrieval: RetrievalRuntime
    ranker: RankerRuntime
    ad_ranker: RankerRuntime | None = None  # the Auction RPC's pCTR model, when configured


class _Tracked(Generic[T]):
    """A source and how to open its bundle as a runtime; a runtime that fails to open leaves
    no download behind."""

    def __init__(self, source: ModelSource, loader: Callable[[Bundle, str], T]) -> None:
        self.source = source
        self.loader = loader

    def load(self, version: str | None = None) -> T:
        version = version or self.source.current_version()
        bundle = self.source.load(version)
        try:
            return self.loader(bundle, version)
        except BaseException:
            self.source.discard(bundle)  # a broken bundle leaves nothing behind
            raise


class ModelWatcher:
    """Holds the live :class:`ServingModels` and refreshes them from their sources."""

    def __init__(
        self,
        retrieval: ModelSource,
        ranker: ModelSource,
        ort_threads: int = 1,
        on_swap: Callable[[ServingModels], None] | None = None,
        ad_ranker: ModelSource | None = None,
        on_failure: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._retrieval = _Tracked(retrieval, lambda b, v: load_retrieval(b, v, ort_threads))
        self._ranker = _Tracked(ranker, lambda b, v: load_ranker(b, v, ort_threads))
        self._ad_ranker = (
            None if ad_ranker is None else _Tracked(ad_ranker, lambda b, v: load_ranker(b, v, ort_threads))
        )
        self._on_swap = on_swap
        self._on_failure = on_failure
        self.failed: dict[tuple[str, str], str] = {}  # (model, version) -> why it did not load
        self.refresh_failures = 0  # a counter for monitoring
        # models whose source points at a version that did not load (the served one is older)
        self.stale: set[str] = set()
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
            was_stale = bool(self.stale)
            for field, tracked, live in tracked_models:
                version = None
                try:
                    version = tracked.source.current_version()
                    if version == live and field in self.stale:  # e.g. the alias moved back
                        self.stale.discard(field)
                        log.info("%s model source is back at the served version %s", field, live)
                    elif version != live and (field, version) not in self.failed:
                        updated = replace(updated, **{field: tracked.load(version)})
                        self.stale.discard(field)
                        log.info("loaded %s model %s (was %s)", field, version, live)
                except Exception as exc:
                    self.stale.add(field)
                    self._failed(field, version or "?", tracked.source.spec, exc)
            swapped = updated is not current
            if swapped:
                self.models = updated  # one reference assignment: atomic for concurrent readers
                self._discard_replaced(current, updated)
        if self._on_swap is not None and (swapped or (was_stale and not self.stale)):
            self._on_swap(updated)
        return swapped

    def _tracked(self) -> dict[str, _Tracked]:
        out: dict[str, _Tracked] = {"retrieval": self._retrieval, "ranker": self._ranker}
        if self._ad_ranker is not None:
            out["ad_ranker"] = self._ad_ranker
        return out

    def _discard_replaced(self, old: ServingModels, new: ServingModels) -> None:
        """Remove the downloads of the runtimes a swap replaced. Requests still holding the old
        snapshot are unaffected: a runtime keeps its graphs, vectors and index in memory."""
        for field, tracked in self._tracked().items():
            before, after = getattr(old, field), getattr(new, field)
            if before is not None and before is not after:
                tracked.source.discard(before.bundle)

    def close(self) -> None:
        """Stop refreshing and remove the served models' downloads (at server shutdown)."""
        self.stop()
        for field, tracked in self._tracked().items():
            runtime = getattr(self.models, field)
            if runtime is not None:
                tracked.source.discard(runtime.bundle)

    def _failed(self, field: str, version: str, spec: str, exc: Exception) -> None:
        """One log line per failed version (not a traceback per poll); the version is not retried
        until the source moves on, and the failure is kept for the health detail."""
        self.refresh_failures += 1
        if (field, version) in self.failed:  # said once already (e.g. the registry is unreachable)
            return
        self.failed[(field, version)] = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.error(
            "cannot load %s model %s from %s, keeping %s: %s",
            field,
            version,
            spec,
            "the served one",
            self.failed[(field, version)],
        )
        if self._on_failure is not None:
            self._on_failure(field, version, self.failed[(field, version)])

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

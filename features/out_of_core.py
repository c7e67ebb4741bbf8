"""Out-of-core preparation: a log larger than memory in, parquet shards of examples out.

:func:`rankforge.features.pipeline.prepare` holds the whole log and every example in memory
(measured: 20M events, 6.3 GB). Here the log is only ever *scanned*:

1. one streaming pass checks the log (bad rows named, :func:`~rankforge.features.log_spec.scan_log`)
   and computes the global time cuts of a ``time`` split;
2. one streaming pass writes it partitioned into user buckets (``hash(user) % n_buckets``,
   ``sink_parquet`` with ``PartitionBy``), each bucket holding every event of its users;
3. per bucket (:class:`SplitJob`), the one sort of its events in event order (user, time, then
   the seeded tie key of ``features.event_order``) -- the order every later step wants -- and
   the split (leave-last-out and random splits are per user or per row, time splits use the
   global cuts), written as sorted train / validation / test parts;
   the known parts' ids of all buckets then fit the id mapping, as on the whole log;
4. per bucket again (:class:`BucketJob`), in memory (one bucket at a time: about
   ``events_per_bucket`` events), the same code as the in-memory pipeline on the sorted parts
   (no second split, no second sort): labels, point-in-time histories, retrieval and ranking
   examples, user aggregates, partial item sums; each written as a shard;
5. item aggregates from the summed partials, declared features, and the feature tables.

An engine (:class:`BucketEngine`) runs the two per-bucket passes: one after another in this
process by default, or as tasks on a cluster (``features.ray_engine``).

Everything is written under a temporary sibling of the output directory, which is renamed into
place only when complete, so a failed run leaves nothing half-written. :func:`load_prepared`
opens the result as :class:`~rankforge.features.pipeline.PreparedData` whose examples stay on
disk (``example_shards``); the trainer streams them shard by shard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import polars as pl

from rankforge.errors import DataError
from rankforge.features import history as hist
from rankforge.features.aggregates import item_aggregates_from_partials, item_partials, user_aggregates
from rankforge.features.coverage import Coverage, held_out_coverage
from rankforge.features.declared_features import (
    context_features,
    fit_context,
    read_side_table,
)
from rankforge.features.event_order import event_order
from rankforge.features.feature_spec import ContextInput, InputLayout
from rankforge.features.id_mapping import IdMapping
from rankforge.features.loaders import scan_interactions
from rankforge.features.log_spec import scan_log
from rankforge.features.pipeline import (
    ORDER,
    DataConfig,
    PreparedData,
    encode_events,
    feature_tables,
    split_events,
)
from rankforge.features.schema import ITEM, ITEM_IDX, LABEL, TIMESTAMP, USER, USER_IDX
from rankforge.features.sequences import PositiveSequences
from rankforge.features.splits import time_cut
from rankforge.features.string_ids import ITEM_KEY, USER_KEY
from rankforge.phase_clock import PhaseClock
from rankforge.processes import alive

log = logging.getLogger(__name__)
BUCKET = "_bucket"
SHARD_KINDS = ("retrieval_examples", "ranking_examples", "test_events", "validation_events")
MANIFEST = "prepared.json"
#: Written into every folder ``prepare_to_disk`` creates: only a folder holding it is replaced by a
#: later run (anything else at ``out`` -- a file, a folder of the user's -- is refused untouched).
MARKER = ".rankforge-prepared"
TMP_INFIX = ".tmp-"  # the temporary sibling: ``.{out.name}.tmp-{pid}-{random}``
SPLIT_PARTS = ("train", "validation", "test")  # a bucket's parts, each in event order
R = TypeVar("R")


def scan_source(config: DataConfig) -> pl.LazyFrame:
    """The configured log as a lazy canonical frame (file sources only: a generated or bundled
    data set fits in memory and goes through ``prepare``)."""
    if config.source != "file" or config.path is None:
        raise DataError(
            f"out-of-core preparation reads a log file (data.source = 'file'), not {config.source!r}"
        )
    if config.log is not None:
        return scan_log(config.path, config.log, [f.source_column for f in context_features(config.features)])
    return scan_interactions(config.path, config.layout)


def _cuts(log: pl.LazyFrame, config: DataConfig) -> tuple[int | None, int | None]:
    """(test_from, validation_from) of a ``time`` split, over the whole log, as ``prepare``
    cuts it: the validation cut is taken on the training part."""
    if config.split != "time":
        return None, None
    test_from = config.test_from if config.test_from is not None else time_cut(log, config.test_fraction)
    validation_from = None
    if config.validation_fraction > 0:
        validation_from = time_cut(log.filter(pl.col(TIMESTAMP) < test_from), config.validation_fraction)
    return test_from, validation_from


def _bucket_parts(
    events: pl.DataFrame, config: DataConfig, cuts: tuple[int | None, int | None]
) -> dict[str, pl.DataFrame]:
    """One bucket's events, in event order, split as ``prepare`` splits the whole
    log: ``SPLIT_PARTS`` (no validation without a validation fraction), each still sorted."""
    train, test = pl.collect_all(
        split_events(events.lazy(), config, config.test_fraction, 0, cuts[0], ordered=True)
    )
    if config.validation_fraction <= 0:
        return {"train": train, "test": test}
    train, validation = pl.collect_all(
        split_events(
            train.lazy(), config, config.validation_fraction, config.validation_seed, cuts[1], ordered=True
        )
    )
    return {"train": train, "validation": validation, "test": test}


def prepare_to_disk(
    config: DataConfig,
    out: str | Path,
    events_per_bucket: int = 4_000_000,
    engine: BucketEngine | None = None,
) -> Path:
    """Prepare ``config``'s log into ``out`` (see the module docstring); returns ``out``. The
    buckets are prepared by ``engine`` (default: one after another in this process)."""
    if config.split == "provided":
        raise DataError("out-of-core preparation splits the log itself: split='provided' is not supported")
    out = Path(out)
    check_output_folder(out, input_paths(config))
    _remove_abandoned(out)
    tmp = out.with_name(f".{out.name}{TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        _prepare(config, tmp, events_per_bucket, engine or InProcess())
        (tmp / MARKER).write_text("written by rankforge prepare: a later run may replace this folder\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def input_paths(config: DataConfig) -> list[Path]:
    """Every file or folder ``config`` reads: the log, the item catalogue, the side tables."""
    tables = [t.path for t in (config.user_table, config.item_table) if t is not None]
    return [Path(p) for p in (config.path, config.items_path, *tables) if p is not None]


def check_output_folder(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work and touching nothing, an output that is a file, a non-empty folder
    ``prepare`` did not write (no :data:`MARKER`), or a folder that holds one of ``inputs``."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)[-120:]} is a file, not a folder: give a folder to write")
    where = out.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == where or where in resolved.parents:
            raise DataError(
                f"--out {str(out)[-120:]} holds the input {str(path)[-120:]}: it would be replaced; "
                "give a folder outside the inputs"
            )
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise DataError(
            f"--out {str(out)[-120:]} is a folder rankforge prepare did not write (no {MARKER}) and "
            "is not empty: refusing to replace it; give a new or empty folder"
        )


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary siblings of ``out`` left by runs whose process is gone (a SIGKILLed
    driver cannot clean up after itself); a live run's stays."""
    for tmp in out.parent.glob(f".{out.name}{TMP_INFIX}*"):
        pid = tmp.name.removeprefix(f".{out.name}{TMP_INFIX}").split("-")[0]
        if tmp.is_dir() and pid.isdigit() and not alive(int(pid)):
            log.info("prepare: removing %s, left by a run that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Known:
    """What the known (train + validation) part of the whole log fixes: the id mapping, the side
    tables and the context features' normalisation."""

    mapping: IdMapping
    users_table: pl.DataFrame | None
    items_table: pl.DataFrame | None
    context: tuple[ContextInput, ...]


@dataclass(frozen=True)
class BucketResult:
    """What one bucket contributes to the global tables (its shards are already written)."""

    users: pl.DataFrame  # user aggregates + latest histories
    item_partials: pl.DataFrame  # summable item aggregates
    positives: int  # positive training events
    coverage: dict[str, Coverage]  # per held-out split
    seconds: dict[str, float]  # wall time per phase
    peak_gb: float  # peak RSS of the process that prepared it (a worker's, on an engine)


@dataclass
class _BucketOutputs:
    """What the buckets contribute to the global tables, summed in bucket order."""

    users: list[pl.DataFrame] = field(default_factory=list)  # user aggregates + latest histories
    item_partials: list[pl.DataFrame] = field(default_factory=list)  # summable item aggregates
    positives: int = 0  # positive training events
    # per held-out split, summed over buckets (each user is in one bucket: the sums are exact)
    coverage: dict[str, Coverage] = field(default_factory=dict)

    def add(self, result: BucketResult) -> None:
        self.users.append(result.users)
        self.item_partials.append(result.item_partials)
        self.positives += result.positives
        for split, counted in result.coverage.items():
            self.coverage[split] = self.coverage.get(split, Coverage()) + counted


def _prepare(config: DataConfig, tmp: Path, events_per_bucket: int, engine: BucketEngine) -> None:
    phase = PhaseClock(log_as="prepare")
    events_log = scan_source(config)
    n_events = events_log.select(pl.len()).collect(engine="streaming").item()
    cuts = _cuts(events_log, config)
    phase.lap("check")
    raw = tmp / "_raw"
    buckets = _partition(events_log, raw, max(1, math.ceil(n_events / events_per_bucket)))
    phase.lap("partition")
    split = SplitJob(config, cuts, tmp / "_split")
    pieces = engine.run(split, buckets)
    peak_gb = _add_bucket_phases(phase, pieces)
    shutil.rmtree(raw)
    known = _fit_known(config, pieces)
    known.mapping.save(tmp / "id_mapping")
    phase.lap("id mapping")
    outputs = _BucketOutputs()
    for kind in SHARD_KINDS:
        (tmp / kind).mkdir()
    results = engine.run(BucketJob(config, known, tmp), [split.folder(b) for b in range(len(buckets))])
    for result in results:
        outputs.add(result)
    peak_gb = max(peak_gb, _add_bucket_phases(phase, results))
    for kind in SHARD_KINDS:  # a split that produced nothing (no validation) has no folder
        if not any((tmp / kind).iterdir()):
            (tmp / kind).rmdir()
    shutil.rmtree(split.out)
    _check_split(config, tmp, outputs.positives)
    layout = _write_feature_tables(config, known, outputs, tmp)
    phase.lap("feature tables")
    meta = {
        "source": config.describe() + " (out of core)",
        "events": n_events,
        "buckets": len(buckets),
        "history_len": config.history_len,
        "training_history": config.training_history,
        "layout": layout.to_dict(),
        "phase_seconds": {k: round(v, 2) for k, v in phase.seconds.items()},
        "bucket_peak_gb": round(peak_gb, 3),  # the largest peak RSS of a process preparing buckets
        "coverage": {split: c.to_dict() for split, c in outputs.coverage.items()},
    }
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True))


def _partition(events_log: pl.LazyFrame, raw: Path, n_buckets: int) -> list[Path]:
    """Stream the log into ``n_buckets`` folders by ``hash(user)``: every event of a user in one
    bucket. Returns the bucket folders, sorted. The buckets are Arrow IPC, uncompressed: they are
    read once, by the split pass, and removed (a third of the time of compressed parquet)."""
    events_log.with_columns((pl.col(USER).hash(7) % n_buckets).cast(pl.Int32).alias(BUCKET)).sink_ipc(
        pl.PartitionBy(raw, key=BUCKET, include_key=False), mkdir=True, engine="streaming"
    )
    return sorted(p for p in raw.iterdir() if p.is_dir())


def _add_bucket_phases(phase: PhaseClock, results: list[KnownIds] | list[BucketResult]) -> float:
    """Add a per-bucket pass's phase times (summed over buckets) to ``phase`` and restart its
    clock; returns the largest peak RSS of a process that ran a bucket."""
    for result in results:
        for name, seconds in result.seconds.items():
            phase.add(name, seconds)
    phase.restart()
    return max((result.peak_gb for result in results), default=0.0)


def _peak_gb() -> float:
    """This process's peak RSS so far (a worker's, on an engine)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclass(frozen=True)
class KnownIds:
    """What one bucket's known (train + validation) part contributes to the id mapping, and its
    training part's context columns (for the context normalisation)."""

    users: pl.DataFrame  # user_id (+ its string key), unique
    items: pl.DataFrame  # item_id (+ its string key), unique
    train_context: pl.DataFrame | None  # the context features' source columns, None without any
    seconds: dict[str, float]  # wall time per phase
    peak_gb: float  # peak RSS of the process that split it


@dataclass(frozen=True)
class SplitJob:
    """The first per-bucket pass (picklable, like :class:`BucketJob`): calling it reads bucket
    ``b``'s raw events from ``folder``, sorts them once in event order, splits them and
    writes the parts (``SPLIT_PARTS``, Arrow IPC) to :meth:`folder` -- overwritten if a retry
    runs it again -- and returns the bucket's :class:`KnownIds`."""

    config: DataConfig
    cuts: tuple[int | None, int | None]
    out: Path  # every bucket's parts, one folder per bucket

    def folder(self, b: int) -> Path:
        """Where bucket ``b``'s sorted parts are written."""
        return self.out / f"part-{b:05d}"

    def __call__(self, b: int, folder: Path) -> KnownIds:
        config, phase = self.config, PhaseClock(log_as="prepare")
        events = _sorted_events(pl.read_ipc(folder / "*.ipc"))
        phase.lap("bucket sort")
        parts = _bucket_parts(events, config, self.cuts)
        out = self.folder(b)
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in parts.items():
            frame.write_ipc(out / f"{name}.arrow")
        phase.lap("bucket split")
        keys = [USER_KEY, ITEM_KEY] if config.string_ids else []
        known = pl.concat([parts["train"], parts["validation"]]) if "validation" in parts else parts["train"]
        context_columns = [f.source_column for f in context_features(config.features)]
        return KnownIds(
            users=known.select(USER, *keys[:1]).unique(subset=[USER]),
            items=known.select(ITEM, *keys[1:]).unique(subset=[ITEM]),
            train_context=parts["train"].select(context_columns) if context_columns else None,
            seconds=phase.seconds,
            peak_gb=_peak_gb(),
        )


def _sorted_events(events: pl.DataFrame) -> pl.DataFrame:
    """``events`` in event order (user, time, seeded tie key: ``features.event_order``), the
    order ``leave_last_out`` and the histories use: most of a bucket's cost."""
    return events.sort(event_order())


def _read_parts(folder: Path) -> dict[str, pl.DataFrame]:
    """A bucket's sorted parts, as :class:`SplitJob` wrote them."""
    return {
        name: pl.read_ipc(folder / f"{name}.arrow")
        for name in SPLIT_PARTS
        if (folder / f"{name}.arrow").is_file()
    }


def _fit_known(config: DataConfig, pieces: list[KnownIds]) -> _Known:
    """The id mapping over the users and items of every bucket's known part (plus the item
    table's catalogue) and the context normalisation fitted on the training part, as
    ``prepare`` fits them on the whole log."""
    keys = [USER_KEY, ITEM_KEY] if config.string_ids else []
    items = (
        read_side_table(config.item_table, ITEM, config.string_ids) if config.item_table is not None else None
    )
    users = (
        read_side_table(config.user_table, USER, config.string_ids) if config.user_table is not None else None
    )
    catalogue = [items.select(ITEM, *keys[1:])] if items is not None else []
    mapping = IdMapping.from_ids(
        pl.concat([p.users for p in pieces]),
        pl.concat([p.items for p in pieces] + catalogue, how="diagonal_relaxed"),
    )
    train_context = [p.train_context for p in pieces if p.train_context is not None]
    context = fit_context(pl.concat(train_context), config.features) if train_context else ()
    return _Known(mapping, users, items, context)


@dataclass(frozen=True)
class BucketJob:
    """Everything a bucket's preparation needs, fixed before any bucket runs (picklable: an
    engine ships it to its workers once). Calling it prepares bucket ``b`` from ``folder``, the
    sorted parts :class:`SplitJob` wrote."""

    config: DataConfig
    known: _Known
    tmp: Path

    def __call__(self, b: int, folder: Path) -> BucketResult:
        """One bucket, in memory, through the in-memory pipeline's steps: encode, number the
        positives before each event, write its example and held-out shards (``part-{b}``,
        overwritten if a retry runs it again), and return its user table and item partial sums."""
        config, known = self.config, self.known
        phase = PhaseClock(log_as="prepare")
        names = [c.name for c in known.context]

        def encoded(frame: pl.DataFrame) -> pl.LazyFrame:
            return encode_events(
                frame.lazy(), known.mapping, config.label_threshold, known.context, config.features
            )

        parts = _read_parts(folder)
        held_out = {split: parts[split] for split in ("test", "validation") if split in parts}
        coverage = {
            split: held_out_coverage(frame.lazy(), known.mapping, config.label_threshold)
            for split, frame in held_out.items()
        }
        # the parts are in event order over raw ids and indices follow raw-id order, so the
        # encoded training events are in event order by index too: no sort below
        train = encoded(parts["train"]).collect()
        events = train.lazy()
        positives = train.filter(pl.col(LABEL) > 0).height
        phase.lap("bucket encode")
        # examples carry n_before, not the history list: the trainer gathers it (features.sequences)
        ranking = (
            hist.events_with_positives_before(
                events.select(USER_IDX, ITEM_IDX, TIMESTAMP, LABEL, *names), ordered=True
            )
            .collect()
            .lazy()
        )
        phase.lap("bucket n_before")
        # Examples stay in event order: deterministic, and the retrieval examples
        # are then also the users' positive sequences. Training events are the ranking examples.
        shards = {
            "retrieval_examples": ranking.filter(pl.col(LABEL) > 0).drop(LABEL),
            "ranking_examples": ranking,
        } | {f"{split}_events": encoded(frame).sort(ORDER) for split, frame in held_out.items()}
        for kind, frame in shards.items():
            frame.collect().write_parquet(self.tmp / kind / f"part-{b:05d}.parquet", compression="lz4")
        phase.lap("bucket shards")
        users = (
            user_aggregates(events)
            .join(hist.latest_from_ordered(ranking, config.history_len), on=USER_IDX, how="left")
            .collect()
        )
        partials = item_partials(events).collect()
        phase.lap("bucket user/item tables")
        return BucketResult(users, partials, positives, coverage, phase.seconds, _peak_gb())


class BucketEngine(Protocol):
    """Runs a per-bucket job (:class:`SplitJob`, :class:`BucketJob`) over the bucket folders;
    results in bucket order."""

    def run(self, job: Callable[[int, Path], R], buckets: list[Path]) -> list[R]: ...


class InProcess:
    """The default engine: the buckets one after another, in this process."""

    def run(self, job: Callable[[int, Path], R], buckets: list[Path]) -> list[R]:
        return [job(b, folder) for b, folder in enumerate(buckets)]


def _check_split(config: DataConfig, tmp: Path, positives: int) -> None:
    """The split must leave positive training events and test events, as ``prepare`` checks."""
    if positives == 0:
        raise DataError(f"no positive training events (label value >= {config.label_threshold})")
    if (
        not any((tmp / "test_events").glob("*.parquet"))
        or pl.scan_parquet(tmp / "test_events").select(pl.len()).collect().item() == 0
    ):
        raise DataError("the split left no test events; lower n_test_per_user or raise test_fraction")


def _write_feature_tables(
    config: DataConfig, known: _Known, outputs: _BucketOutputs, tmp: Path
) -> InputLayout:
    """The user and item feature tables and vocabularies from the buckets' parts; returns the
    input layout they declare."""
    tables = feature_tables(
        config,
        known.mapping,
        known.users_table,
        known.items_table,
        pl.concat(outputs.users).lazy(),
        item_aggregates_from_partials(pl.concat(outputs.item_partials).lazy(), known.mapping.n_items),
        known.context,
    )
    tables.users.write_parquet(tmp / "user_features.parquet")
    tables.items.write_parquet(tmp / "item_features.parquet")
    (tmp / "vocabularies").mkdir()
    for name, vocab in tables.vocabularies.items():
        vocab.write_parquet(tmp / "vocabularies" / f"{name}.parquet")
    return tables.layout


def _shards(directory: Path, kind: str) -> list[Path]:
    return sorted((directory / kind).glob("part-*.parquet")) if (directory / kind).is_dir() else []


def load_prepared(directory: str | Path) -> PreparedData:
    """A prepared directory as :class:`PreparedData`: ids, feature tables and held-out events in
    memory, the training examples left on disk as shards (``example_shards``)."""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise DataError(f"not a prepared data directory (no {MANIFEST}): {d}")
    meta = json.loads((d / MANIFEST).read_text())
    shards = {kind: _shards(d, kind) for kind in SHARD_KINDS}
    validation = pl.read_parquet(shards["validation_events"]) if shards["validation_events"] else None
    vocabularies = {p.stem: pl.read_parquet(p) for p in sorted((d / "vocabularies").glob("*.parquet"))}
    mapping = IdMapping.load(d / "id_mapping")
    history = pl.lit([], dtype=pl.List(pl.Int64)).alias(hist.HISTORY)  # the frames' schema, no rows
    return PreparedData(
        mapping=mapping,
        inputs=InputLayout.from_dict(meta["layout"]),
        vocabularies=vocabularies,
        train_events=mapping.encode_raw(
            pl.scan_parquet(shards["ranking_examples"]).select(USER_IDX, ITEM_IDX, TIMESTAMP, LABEL)
        ).collect(),
        test_events=pl.read_parquet(shards["test_events"]).sort(ORDER),
        retrieval_examples=pl.read_parquet(shards["retrieval_examples"][0]).clear().with_columns(history),
        ranking_examples=pl.read_parquet(shards["ranking_examples"][0]).clear().with_columns(history),
        user_features=pl.read_parquet(d / "user_features.parquet"),
        item_features=pl.read_parquet(d / "item_features.parquet"),
        history_len=meta["history_len"],
        validation_events=validation.sort(ORDER) if validation is not None else None,
        training_history=meta["training_history"],
        source=meta["source"],
        example_shards={k: shards[k] for k in ("retrieval_examples", "ranking_examples")},
        sequences=PositiveSequences.from_frame(
            pl.read_parquet(shards["retrieval_examples"], columns=[USER_IDX, ITEM_IDX]), mapping.n_users
        ),
        coverage={split: Coverage.from_dict(c) for split, c in meta.get("coverage", {}).items()},
    )

"""Your own interaction log: which columns are which, and how a label is derived (a first slice of
the declarative feature spec of issue #11).

``[data.log]`` in a config maps a CSV (any column names), parquet or NDJSON log onto the canonical
schema (``user_id, item_id, rating, timestamp``) and says what a positive is::

    [data]
    source = "file"
    path = "my_log.csv"
    [data.log]
    user = "uid"                 # integer ids (the serving API's ids are int64)
    item = "video"
    timestamp = "ts"             # integer seconds or milliseconds, or ISO-8601 strings;
                                 # false: no time column (row order is time order)
    label = "clicked"            # the column the label comes from (absent: implicit feedback)
    label_rule = "binary"        # 0/1 column | "threshold" (value >= label_threshold) | "implicit"

The label column travels as the canonical ``rating`` and the rule becomes the pipeline's
``positive_threshold`` (binary: 0.5), so every downstream step is unchanged. Bad data is refused
with the column and a few offending rows: null ids, non-numeric or negative labels, a binary label
outside {0, 1}, unparsable timestamps, or a spec naming a column the file lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from rankforge.errors import DataError
from rankforge.features.loaders import existing_file
from rankforge.features.schema import INTERACTION_SCHEMA, ITEM, RATING, TIMESTAMP, USER
from rankforge.features.string_ids import KEY_OF, with_stable_ids

SHOWN = 5
FORMATS = {".csv": "csv", ".parquet": "parquet", ".ndjson": "ndjson", ".jsonl": "ndjson"}
#: Epoch values above this are milliseconds (1e11 seconds is the year 5138).
MS_THRESHOLD = 100_000_000_000


class LogSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = "user_id"
    item: str = "item_id"
    # the time column; ``false`` in TOML (``null`` in YAML): the log has no time, its row order is
    # its time order (a random or provided split; leave-last-out takes each user's last rows)
    timestamp: str | None = "timestamp"
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    label: str | None = None
    label_rule: Literal["implicit", "binary", "threshold"] = "implicit"
    label_threshold: float | None = None
    # "string": ids are strings ("u_95"), kept as user_key/item_key beside stable int64 raw ids
    # (rankforge.features.string_ids); "integer": int64 ids, anything else is refused
    ids: Literal["integer", "string"] = "integer"

    @field_validator("timestamp", mode="before")
    @classmethod
    def _no_time(cls, value: object) -> object:
        """``timestamp = false``: TOML has no null, so false says "no time column"."""
        return None if value is False else value

    @model_validator(mode="after")
    def _rule_fits(self) -> LogSpec:
        if self.label_rule == "implicit" and self.label is not None:
            raise ValueError("data.log.label is set: give label_rule = 'binary' or 'threshold'")
        if self.label_rule != "implicit" and self.label is None:
            raise ValueError(f"data.log.label_rule = {self.label_rule!r} needs data.log.label (the column)")
        if (self.label_rule == "threshold") != (self.label_threshold is not None):
            raise ValueError("data.log.label_threshold goes with label_rule = 'threshold' (and only with it)")
        return self

    @property
    def positive_threshold(self) -> float | None:
        """What the pipeline compares the canonical rating with (None: every event is positive)."""
        return {"binary": 0.5, "threshold": self.label_threshold}.get(self.label_rule)


def row_number(path: str | Path) -> tuple[str, int]:
    """How a bad row is named in messages, so a user finds it in their editor: ``line`` numbers of
    a CSV (the header is line 1) or NDJSON file, 1-based ``row`` numbers of a parquet file.
    Returns (the name, the number of the first data row)."""
    suffix = Path(path).suffix.lower()
    if FORMATS.get(suffix) == "csv":
        return "line", 2
    if FORMATS.get(suffix) == "ndjson":
        return "line", 1
    return "row", 1


def with_row_numbers(frame: pl.DataFrame, path: str | Path) -> tuple[pl.DataFrame, str]:
    """``frame`` with each row's number in ``path`` (see :func:`row_number`) and that column's name."""
    name, first = row_number(path)
    return frame.with_row_index(name, offset=first), name


def preview(frame: pl.DataFrame) -> str:
    rows = [str(r) for r in frame.head(SHOWN).rows(named=True)]
    return ", ".join(rows) + (f" (+{frame.height - SHOWN} more)" if frame.height > SHOWN else "")


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV, parquet or NDJSON file (by suffix) as read, or a one-line error naming it."""
    p = existing_file(path)
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: expected a .csv, .parquet, .ndjson or .jsonl file, got {p.suffix!r}")
    try:
        return {"csv": pl.read_csv, "parquet": pl.read_parquet, "ndjson": pl.read_ndjson}[kind](p)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataError(f"cannot read {p}: {str(exc)[:200]}") from exc


def read_log(path: str | Path, spec: LogSpec, context: list[str] | None = None) -> pl.DataFrame:
    """A CSV/parquet/NDJSON log in the canonical schema, validated; errors name column and rows.
    ``context``: numeric columns kept as they are (request-time context features). The checks
    and the mapping are :func:`scan_log`'s; this collects its result."""
    lazy = scan_log(path, spec, context)
    try:
        return lazy.collect()
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataError(f"cannot read {path}: {str(exc)[:200]}") from exc


def _refuse_null_ids(frame: pl.DataFrame, column: str, path: Path) -> None:
    numbered, row = with_row_numbers(frame, path)
    nulls = numbered.filter(frame[column].is_null())
    if nulls.height:
        raise DataError(
            f"{path}: column {column!r} has {nulls.height} null id(s): {preview(nulls.select(row, column))}"
        )


def read_ids(frame: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """``column`` as int64 ids; null or non-integer ids are refused with a few offending rows."""
    _refuse_null_ids(frame, column, path)
    ids = frame[column].cast(pl.Int64, strict=False)
    numbered, row = with_row_numbers(frame, path)
    bad = numbered.filter(ids.is_null())
    if bad.height:
        raise DataError(
            f"{path}: column {column!r} holds non-integer ids (set data.log.ids = 'string' for ids "
            "like 'u_95'): "
            f"{preview(bad.select(row, column))}"
        )
    return ids


@dataclass
class _Columns:
    """The canonical columns being built from the raw ones (name -> expression) and the checks on
    the raw rows, in the order they run: name -> (bad-row condition, the column shown with the
    bad rows, message; "{n}" is the number of bad rows)."""

    out: dict[str, pl.Expr] = field(default_factory=dict)
    checks: dict[str, tuple[pl.Expr, str, str]] = field(default_factory=dict)

    def add_ids(self, spec: LogSpec) -> None:
        for column, target in ((spec.user, USER), (spec.item, ITEM)):
            ids = pl.col(column).cast(pl.Int64, strict=False)
            self.checks[f"null {target}"] = (
                pl.col(column).is_null(),
                column,
                f"column {column!r} has {{n}} null id(s)",
            )
            if spec.ids == "string":
                self.out[target] = pl.col(f"_{target}")  # joined from the distinct strings
                continue
            self.checks[f"bad {target}"] = (
                ids.is_null() & pl.col(column).is_not_null(),
                column,
                f"column {column!r} holds non-integer ids (set data.log.ids = 'string' for ids like 'u_95')",
            )
            self.out[target] = ids

    def add_label(self, spec: LogSpec) -> None:
        if spec.label is None:
            self.out[RATING] = pl.lit(None, dtype=pl.Float64)
            return
        label = spec.label
        value = pl.col(label).cast(pl.Float64, strict=False)
        self.checks["label"] = (
            value.is_null() | ~value.is_finite(),
            label,
            f"label column {label!r} has missing or non-numeric values",
        )
        self.checks["negative"] = (value < 0, label, f"label column {label!r} has negative values")
        if spec.label_rule == "binary":
            self.checks["binary"] = (
                ~value.is_in([0.0, 1.0]),
                label,
                f"label column {label!r} (label_rule 'binary') holds values other than 0/1",
            )
        self.out[RATING] = value

    def add_timestamp(self, spec: LogSpec, schema: pl.Schema) -> None:
        """Seconds since the epoch from an integer, a date-time or a date-time string column; a log
        without timestamps is ordered as written."""
        if spec.timestamp is None:
            self.out[TIMESTAMP] = pl.int_range(pl.len(), dtype=pl.Int64)
            return
        dtype = schema[spec.timestamp]
        raw = pl.col(spec.timestamp)
        if dtype == pl.String:
            seconds = raw.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
        elif dtype.is_temporal():
            seconds = raw.dt.epoch("s")
        else:
            seconds = raw.cast(pl.Int64, strict=False)
        problem = "unparsable" if dtype == pl.String or dtype.is_temporal() else "non-integer"
        self.checks["timestamp"] = (
            seconds.is_null(),
            spec.timestamp,
            f"column {spec.timestamp!r} has {problem} timestamps",
        )
        self.out[TIMESTAMP] = seconds

    def add_context(self, context: list[str]) -> None:
        for column in context:
            value = pl.col(column).cast(pl.Float64, strict=False)
            self.checks[f"context {column}"] = (
                value.is_null() | ~value.is_finite(),
                column,
                f"context column {column!r} has missing or non-numeric values",
            )
            self.out[column] = value

    def check(self, frame: pl.LazyFrame, path: Path, timestamped: bool) -> int:
        """Run every check in one streaming pass; the first failing one is an error naming its
        first bad rows (their line numbers in the file, see :func:`row_number`). Returns the
        largest timestamp."""
        try:
            counts = frame.select(
                pl.len().alias("_rows"),
                *(cond.sum().alias(name) for name, (cond, _, _) in self.checks.items()),
                (self.out[TIMESTAMP].max() if timestamped else pl.lit(0)).alias("_max_ts"),
            ).collect(engine="streaming")
        except (pl.exceptions.ComputeError, OSError) as exc:
            raise DataError(f"cannot read {path}: {str(exc)[:200]}") from exc
        if counts["_rows"].item() == 0:
            raise DataError(f"no interactions in {path}")
        for name, (cond, column, message) in self.checks.items():
            n = counts[name].item()
            if n:
                row, first = row_number(path)
                numbered = frame.with_row_index(row, offset=first)
                rows = numbered.filter(cond).select(row, column).head(SHOWN).collect()
                more = f" (+{n - rows.height} more)" if n > rows.height else ""
                shown = ", ".join(str(r) for r in rows.rows(named=True))
                raise DataError(f"{path}: {message.replace('{n}', str(n))}: {shown}{more}")
        return int(counts["_max_ts"].item() or 0)


def _scan_file(path: str | Path, spec: LogSpec, context: list[str]) -> tuple[Path, pl.LazyFrame, pl.Schema]:
    """The file scanned by its format, with every column ``spec`` and ``context`` name present."""
    p = existing_file(path)
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: expected a .csv, .parquet, .ndjson or .jsonl file, got {p.suffix!r}")
    frame = {"csv": pl.scan_csv, "parquet": pl.scan_parquet, "ndjson": pl.scan_ndjson}[kind](p)
    schema = frame.collect_schema()
    wanted = {"user": spec.user, "item": spec.item, "timestamp": spec.timestamp, "label": spec.label}
    wanted |= {f"context {c!r}": c for c in context}
    missing = [f"{role}={col!r}" for role, col in wanted.items() if col is not None and col not in schema]
    if missing:
        raise DataError(
            f"{p}: data.log names column(s) the file lacks: {', '.join(missing)}; it has {schema.names()}"
        )
    return p, frame, schema


def scan_log(path: str | Path, spec: LogSpec, context: list[str] | None = None) -> pl.LazyFrame:
    """The log as a lazy frame in the canonical schema, checked in one streaming pass: bad rows
    are named with their row numbers in the file. Both :func:`read_log` (which collects it) and
    out-of-core preparation (which never does) read logs through this."""
    context = context or []
    p, frame, schema = _scan_file(path, spec, context)
    columns = _Columns()
    columns.add_ids(spec)
    columns.add_label(spec)
    columns.add_timestamp(spec, schema)
    columns.add_context(context)
    max_ts = columns.check(frame, p, timestamped=spec.timestamp is not None)
    out = columns.out
    if (
        spec.timestamp is not None
        and schema[spec.timestamp].is_numeric()
        and (spec.timestamp_unit == "ms" or (spec.timestamp_unit == "auto" and max_ts > MS_THRESHOLD))
    ):
        out[TIMESTAMP] = out[TIMESTAMP] // 1000
    if spec.ids == "string":
        for column, target in ((spec.user, USER), (spec.item, ITEM)):
            frame = with_stable_ids(frame, column, target, f"_{target}")
            out[KEY_OF[target]] = pl.col(KEY_OF[target])
    return frame.select(
        expr.cast(INTERACTION_SCHEMA.get(name, pl.Float64() if name in context else pl.String())).alias(name)
        for name, expr in out.items()
    )

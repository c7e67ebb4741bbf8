"""Readers for interaction logs in the standard public layouts, all returning the canonical schema.

Supported layouts (picked by file name, or explicitly with ``layout=``):

* ``ratings.csv``  MovieLens "latest" (``userId,movieId,rating,timestamp`` with a header)
* ``ratings.dat``  MovieLens 1M/10M (``user::item::rating::timestamp``, no header)
* ``u.data``       MovieLens 100K (tab separated, no header)
* ``train.txt`` / ``test.txt``  LightGCN user-item lists (``user item item ...`` per line)
* ``train.tsv`` / ``test.tsv``  IR-Benchmark pairs (the PSL paper's splits, Tiny-Snow/IR-Benchmark):
  tab separated, header ``user_procid  item_procid``, one interaction per line
* ``*.parquet``    any log already in the canonical schema (``user_id``, ``item_id``, optional
  ``rating`` and ``timestamp``)

Everything is lazy (``scan_*``) so large logs stream through the pipeline; validation that needs
data (empty file, unparsable values) happens when the frame is collected by :func:`load_interactions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from rankforge.errors import DataError
from rankforge.features.schema import INTERACTION_SCHEMA, ITEM, RATING, TIMESTAMP, USER, require_columns

Layout = Literal["movielens-csv", "movielens-dat", "movielens-100k", "lightgcn", "ir-benchmark", "parquet"]

_LAYOUT_BY_NAME: dict[str, Layout] = {
    "ratings.csv": "movielens-csv",
    "ratings.dat": "movielens-dat",
    "u.data": "movielens-100k",
    "train.txt": "lightgcn",
    "test.txt": "lightgcn",
    "train.tsv": "ir-benchmark",
    "test.tsv": "ir-benchmark",
}


def detect_layout(path: Path) -> Layout:
    """Name the layout from the file name so a config only has to give a path."""
    if path.name in _LAYOUT_BY_NAME:
        return _LAYOUT_BY_NAME[path.name]
    if path.suffix == ".parquet":
        return "parquet"
    raise DataError(
        f"cannot tell the layout of {path}: expected one of {sorted(_LAYOUT_BY_NAME)} or *.parquet "
        "(or pass layout= explicitly)"
    )


def existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"interaction file not found: {p}")
    if not p.is_file():
        raise DataError(f"interaction path is not a file: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"interaction file is empty: {p}")
    return p


def _canonical(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Cast to the canonical schema, adding absent optional columns as nulls."""
    names = frame.collect_schema().names()
    exprs = []
    for name, dtype in INTERACTION_SCHEMA.items():
        col = pl.col(name) if name in names else pl.lit(None)
        exprs.append(col.cast(dtype, strict=True).alias(name))
    return frame.select(exprs)


def scan_movielens_csv(path: str | Path) -> pl.LazyFrame:
    p = existing_file(path)
    frame = pl.scan_csv(p, has_header=True)
    require_columns(frame, ["userId", "movieId", "rating", "timestamp"], f"MovieLens ratings.csv {p}")
    return _canonical(frame.rename({"userId": USER, "movieId": ITEM}))


def _scan_delimited(path: Path, separator: str, what: str) -> pl.LazyFrame:
    """Read ``user<sep>item<sep>rating<sep>timestamp`` lines; ``separator`` may be multi-byte."""
    lines = pl.scan_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["line"],
        schema={"line": pl.String},
    )
    parts = pl.col("line").str.strip_chars().str.split(separator)
    return _canonical(
        lines.filter(pl.col("line").str.strip_chars() != "")
        .with_columns(parts.alias("parts"), parts.list.len().alias("n_fields"))
        .pipe(_check_field_count, 4, what)
        .select(
            pl.col("parts").list.get(0).alias(USER),
            pl.col("parts").list.get(1).alias(ITEM),
            pl.col("parts").list.get(2).alias(RATING),
            pl.col("parts").list.get(3).alias(TIMESTAMP),
        )
    )


def _check_field_count(frame: pl.LazyFrame, expected: int, what: str) -> pl.LazyFrame:
    # A wrong separator or a truncated line would otherwise surface as a null id much later.
    bad = frame.filter(pl.col("n_fields") != expected).select("line").head(1).collect()
    if bad.height:
        raise DataError(f"{what}: expected {expected} fields per line, got line {bad.item()!r}")
    return frame


def scan_movielens_dat(path: str | Path) -> pl.LazyFrame:
    p = existing_file(path)
    return _scan_delimited(p, "::", f"MovieLens ratings.dat {p}")


def scan_movielens_100k(path: str | Path) -> pl.LazyFrame:
    p = existing_file(path)
    return _scan_delimited(p, "\t", f"MovieLens u.data {p}")


def scan_lightgcn(path: str | Path) -> pl.LazyFrame:
    """One ``user item item ...`` line per user; LightGCN files carry no rating or time.

    The position of an item on its line becomes its timestamp so that time-ordered features
    (histories) still have a stable order.
    """
    p = existing_file(path)
    lines = pl.scan_csv(
        p,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["line"],
        schema={"line": pl.String},
    )
    tokens = pl.col("line").str.strip_chars().str.split(" ")
    frame = (
        lines.filter(pl.col("line").str.strip_chars() != "")
        .select(tokens.list.get(0).alias(USER), tokens.list.slice(1).alias(ITEM))
        .explode(ITEM)
        .filter(pl.col(ITEM).is_not_null() & (pl.col(ITEM) != ""))
        .with_columns(pl.int_range(pl.len()).over(USER).alias(TIMESTAMP))
    )
    return _canonical(frame)


IR_BENCHMARK_COLUMNS = ("user_procid", "item_procid")


def scan_ir_benchmark(path: str | Path) -> pl.LazyFrame:
    """IR-Benchmark ``train.tsv``/``test.tsv``: a header, then one ``user<TAB>item`` pair per line
    (dense ids). No rating or time: the position of a pair among its user's lines becomes its
    timestamp, as for LightGCN lists."""
    p = existing_file(path)
    frame = pl.scan_csv(
        p, separator="\t", has_header=True, schema_overrides=dict.fromkeys(IR_BENCHMARK_COLUMNS, pl.String)
    )
    require_columns(frame, list(IR_BENCHMARK_COLUMNS), f"IR-Benchmark file {p}")
    return _canonical(
        frame.select(pl.col("user_procid").alias(USER), pl.col("item_procid").alias(ITEM)).with_columns(
            pl.int_range(pl.len()).over(USER).alias(TIMESTAMP)
        )
    )


def scan_parquet_log(path: str | Path) -> pl.LazyFrame:
    p = existing_file(path)
    frame = pl.scan_parquet(p)
    require_columns(frame, [USER, ITEM], f"interaction log {p}")
    return _canonical(frame)


_SCANNERS = {
    "movielens-csv": scan_movielens_csv,
    "movielens-dat": scan_movielens_dat,
    "movielens-100k": scan_movielens_100k,
    "lightgcn": scan_lightgcn,
    "ir-benchmark": scan_ir_benchmark,
    "parquet": scan_parquet_log,
}


def scan_interactions(path: str | Path, layout: Layout | None = None) -> pl.LazyFrame:
    """Lazily read a log in any supported layout into the canonical schema."""
    p = Path(path)
    layout = layout or detect_layout(p)
    if layout not in _SCANNERS:
        raise DataError(f"unknown layout {layout!r}; expected one of {sorted(_SCANNERS)}")
    return _SCANNERS[layout](p)


def load_interactions(path: str | Path, layout: Layout | None = None) -> pl.DataFrame:
    """Read and validate a whole log: parse errors, null ids and empty logs become DataError."""
    try:
        frame = scan_interactions(path, layout).collect()
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as exc:
        raise DataError(f"cannot parse interactions from {path}: {exc}") from exc
    if frame.height == 0:
        raise DataError(f"no interactions in {path}")
    null_ids = frame.filter(pl.col(USER).is_null() | pl.col(ITEM).is_null()).height
    if null_ids:
        raise DataError(f"{path}: {null_ids} row(s) without a user or item id")
    return frame


def load_movielens_items(path: str | Path) -> pl.DataFrame:
    """``movies.csv`` (``movieId,title,genres``) as ``item_id`` + a list of genre strings."""
    p = existing_file(path)
    frame = pl.scan_csv(p, has_header=True)
    require_columns(frame, ["movieId", "genres"], f"MovieLens movies.csv {p}")
    genres = pl.col("genres").str.split("|").list.filter(pl.element() != "(no genres listed)")
    return frame.select(pl.col("movieId").cast(pl.Int64).alias(ITEM), genres.alias("genres")).collect()


def load_lightgcn_split(directory: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LightGCN ships its own train/test split: keep it instead of re-splitting."""
    d = Path(directory)
    return load_interactions(d / "train.txt", "lightgcn"), load_interactions(d / "test.txt", "lightgcn")


def load_ir_benchmark_split(directory: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """An IR-Benchmark data set's own train/test split (``train.tsv``, ``test.tsv``)."""
    d = Path(directory)
    return (
        load_interactions(d / "train.tsv", "ir-benchmark"),
        load_interactions(d / "test.tsv", "ir-benchmark"),
    )

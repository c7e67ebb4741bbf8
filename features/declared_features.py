"""Declared features as columns: side tables in, vocabulary indices and normalised numbers out.

Every declared feature becomes one column of the user or item feature table, named after the
feature: a ``list[int64]`` of vocabulary indices (categorical: at most one) or a ``float32``
(numeric). Vocabularies and normalisation statistics are fitted on the rows of ids the model
knows, with Polars expressions, so the same code runs for ten items or ten million.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from rankforge.errors import DataError
from rankforge.features.feature_spec import ContextInput, Feature, Side, SideTable
from rankforge.features.log_spec import preview, read_ids, read_table, with_row_numbers
from rankforge.features.string_ids import with_stable_ids

VALUE = "value"
INDEX = "index"
_EMPTY = pl.lit([], dtype=pl.List(pl.Int64))


def read_side_table(table: SideTable, id_column: str, string_ids: bool = False) -> pl.DataFrame:
    """A side table with its key column renamed to ``id_column`` (int64), one row per id; with
    ``string_ids`` (the log's ids are strings) the key column holds those strings, kept as the
    ``user_key``/``item_key`` column beside their stable raw ids."""
    frame = read_table(table.path)
    if table.key not in frame.columns:
        raise DataError(f"{table.path}: key column {table.key!r} not found; it has {frame.columns}")
    if string_ids:
        if frame[table.key].null_count():
            raise DataError(f"{table.path}: key column {table.key!r} has null ids")
        frame = with_stable_ids(frame.lazy(), table.key, id_column, "_stable_id").collect()
        ids = frame["_stable_id"]
        frame = frame.drop("_stable_id")
    else:
        ids = read_ids(frame, table.key, table.path)
    frame = frame.with_columns(ids.alias(table.key)).rename({table.key: id_column})
    numbered, row = with_row_numbers(frame, table.path)
    dupes = numbered.filter(pl.col(id_column).is_duplicated())
    if dupes.height:
        raise DataError(
            f"{table.path}: key column {table.key!r} repeats ids: {preview(dupes.select(row, id_column))}"
        )
    return frame


def check_columns(table: pl.DataFrame, features: list[Feature], side: Side, where: str) -> None:
    """Every declared feature of ``side`` names a column the table has."""
    missing = [
        f"{f.name}: {f.source_column!r}"
        for f in features
        if f.side == side and f.source_column not in table.columns
    ]
    if missing:
        raise DataError(
            f"{where}: declared feature column(s) not found: {', '.join(missing)}; it has {table.columns}"
        )


def _values(table: pl.DataFrame, feature: Feature, where: str) -> pl.Expr:
    """The feature's raw values as ``list[str]`` (nulls dropped)."""
    column = feature.source_column
    dtype = table.schema[column]
    if feature.kind == "categorical":
        if isinstance(dtype, pl.List):
            raise DataError(f"{where}: feature {feature.name!r} is categorical but {column!r} holds lists")
        return pl.concat_list(pl.col(column).cast(pl.String)).list.drop_nulls()
    if isinstance(dtype, pl.List):
        return pl.col(column).cast(pl.List(pl.String)).list.drop_nulls()
    if dtype != pl.String or feature.separator is None:
        raise DataError(
            f"{where}: multi_categorical feature {feature.name!r} needs a list column or a string "
            f"column with a separator; {column!r} is {dtype}"
        )
    return (
        pl.col(column)
        .str.split(feature.separator)
        .list.eval(pl.element().str.strip_chars())
        .list.filter(pl.element() != "")
    )


def vocabulary(values: pl.LazyFrame, cap: int | None) -> pl.DataFrame:
    """``value -> index``: sorted values; with ``cap``, the ``cap`` most frequent (ties by value)."""
    counts = values.explode(VALUE).drop_nulls(VALUE).group_by(VALUE).len()
    if cap is not None:
        counts = counts.sort(["len", VALUE], descending=[True, False]).head(cap)
    vocab = counts.select(VALUE).sort(VALUE).collect()
    return vocab.with_row_index(INDEX).select(VALUE, pl.col(INDEX).cast(pl.Int64))


def vocabulary_digest(vocab: pl.DataFrame) -> str:
    """16 hex digits of SHA-256 over the values in index order."""
    values = vocab.sort(INDEX)[VALUE].cast(pl.String).to_list()
    return hashlib.sha256("\x1f".join(values).encode()).hexdigest()[:16]


def declared_columns(
    table: pl.DataFrame | None,
    features: list[Feature],
    side: Side,
    ids: pl.DataFrame,
    id_column: str,
    idx_column: str,
    where: str,
    fixed: dict[str, pl.DataFrame] | None = None,
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """(``idx_column`` + one column per declared feature of ``side`` for every known id, in index
    order; the vocabularies of the categorical ones). ``ids`` maps raw id -> index; ids the table
    lacks get empty lists and null numbers (0 once the dense matrix is built). ``fixed``: the
    vocabularies to encode with (a trained model's; values outside them are dropped) instead of
    fitting them on these rows."""
    mine = [f for f in features if f.side == side and f.kind != "sequence"]  # sequences: see below
    base = ids.select(idx_column, id_column).sort(idx_column)
    if not mine:
        return base.select(idx_column), {}
    if table is None:
        raise DataError(
            f"{where}: {side} feature(s) {[f.name for f in mine]} are declared but there is no {side} table"
        )
    check_columns(table, mine, side, where)
    known = base.join(table, on=id_column, how="left")
    columns, vocabularies = [], {}
    for f in mine:
        if f.is_sparse:
            raw = known.select(idx_column, _values(known, f, where).alias(VALUE))
            vocab = (
                fixed[f.name]
                if fixed is not None and f.name in fixed
                else vocabulary(raw.lazy(), f.max_vocabulary)
            )
            vocabularies[f.name] = vocab
            encoded = (
                raw.lazy()
                .explode(VALUE)
                .join(vocab.lazy(), on=VALUE, how="inner")
                .group_by(idx_column)
                .agg(pl.col(INDEX).unique().sort().alias(f.name))
            )
            columns.append(encoded.collect())
        else:
            columns.append(known.select(idx_column, _numeric(known, f, where, idx_column)))
    out = base.select(idx_column)
    for frame in columns:
        out = out.join(frame, on=idx_column, how="left")
    fill = [pl.col(f.name).fill_null(_EMPTY) for f in mine if f.is_sparse]
    return out.with_columns(fill).sort(idx_column), vocabularies


def _numeric(known: pl.DataFrame, feature: Feature, where: str, idx_column: str) -> pl.Expr:
    column = feature.source_column
    values = known[column].cast(pl.Float64, strict=False)
    bad = known.filter(values.is_null() & known[column].is_not_null())
    if bad.height:
        raise DataError(
            f"{where}: numeric feature {feature.name!r} has non-numeric values: {preview(bad.select(column))}"
        )
    if feature.normalization == "log1p":
        negative = known.filter(values < 0)
        if negative.height:
            raise DataError(
                f"{where}: feature {feature.name!r} (normalization 'log1p') has negative values: "
                f"{preview(negative.select(column))}"
            )
        values = values.log1p()
    elif feature.normalization == "standard":
        mean, std = values.mean(), values.std()
        if mean is not None:
            values = (values - mean) / (std if std and std > 0 else 1.0)
    return pl.lit(values).cast(pl.Float32).alias(feature.name)


def side_table_path(table: SideTable | None, folder: Path) -> SideTable | None:
    """``table`` with a relative path taken from ``folder`` (the config file's)."""
    if table is None or table.path.is_absolute():
        return table
    return table.model_copy(update={"path": folder / table.path})


def context_features(features: list[Feature]) -> list[Feature]:
    return [f for f in features if f.side == "context"]


def fit_context(train: pl.DataFrame, features: list[Feature]) -> tuple[ContextInput, ...]:
    """Each context feature's normalisation, fitted on the training events' raw column."""
    out = []
    for f in context_features(features):
        values = train[f.source_column].cast(pl.Float64)
        outside = pl.Series([False] * len(values))
        if f.min is not None:
            outside = outside | (values < f.min)
        if f.max is not None:
            outside = outside | (values > f.max)
        if outside.any():
            example = values.filter(outside)[0]
            raise DataError(
                f"context feature {f.name!r}: {int(outside.sum())} training event(s) outside its declared "
                f"range [{f.min}, {f.max}] (e.g. {example:g})"
            )
        if f.normalization == "log1p":
            if (values < 0).any():
                raise DataError(f"context feature {f.name!r} (normalization 'log1p') has negative values")
            transform, shift, scale = "log1p", 0.0, 1.0
        elif f.normalization == "standard":
            std = values.std()
            transform, shift, scale = "none", float(values.mean() or 0.0), float(std) if std else 1.0
        else:
            transform, shift, scale = "none", 0.0, 1.0
        out.append(ContextInput(f.name, transform, shift, scale, minimum=f.min, maximum=f.max))
    return tuple(out)


def with_context(
    frame: pl.LazyFrame, context: tuple[ContextInput, ...], features: list[Feature]
) -> pl.LazyFrame:
    """``frame`` plus each context feature's normalised column (float32, named after it), computed
    from the raw log column exactly as the server normalises a request's raw value."""
    source = {f.name: f.source_column for f in context_features(features)}
    return frame.with_columns(c.expr(source[c.name]) for c in context) if context else frame


def with_sequences(
    users: pl.DataFrame, items: pl.DataFrame, features: list[Feature], vocabularies: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """User features plus each declared sequence: the values of its item feature over the user's
    latest history (items without a value left out), in the item feature's vocabulary (which the
    sequence shares: returned under the sequence's name too)."""
    sequences = [f for f in features if f.kind == "sequence"]
    if not sequences:
        return users, {}
    rows = users.select("user_idx", "history").with_row_index("_row").explode("history")
    for f in sequences:
        values = items.select(
            pl.col("item_idx").alias("history"), pl.col(f.column).list.first().alias(f.name)
        )
        rows = rows.join(values, on="history", how="left", maintain_order="left")
    lists = rows.group_by("_row", maintain_order=True).agg(pl.col(f.name).drop_nulls() for f in sequences)
    out = users.with_row_index("_row").join(lists, on="_row", how="left", maintain_order="left").drop("_row")
    return out, {f.name: vocabularies[f.vocabulary] for f in sequences}

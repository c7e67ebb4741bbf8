"""String ids (``"u_95"``, SKUs, UUIDs) as stable int64 raw ids.

Everything past the log reader keys users and items by an int64 raw id: the id mapping, the
Redis records (and the histories inside them), bundles, evaluation. A log with string ids gets,
per distinct string, the first 63 bits of its BLAKE2b digest as that raw id: a pure function of
the string, so the server turns a request's ``user_key`` into the same id without any table, a
retrained model on a grown log gives an id the same raw id as before (warm starts, reference
models and A/B tests match rows by raw id), and nothing depends on a library's hash staying the
same across versions. The strings are kept beside the ids (``user_key``/``item_key`` in the id
mapping) so responses can name items as the log did. Two strings with one id (a collision, odds
about n^2 / 2^64) are refused when the mapping is built.
"""

from __future__ import annotations

import hashlib

import polars as pl

from rankforge.errors import DataError

USER_KEY = "user_key"
ITEM_KEY = "item_key"
KEY_OF = {"user_id": USER_KEY, "item_id": ITEM_KEY}
_MASK = (1 << 63) - 1
MAX_KEY_CHARS = 256


def stable_id(key: str) -> int:
    """The raw id of a string id: 63 bits of BLAKE2b, non-negative."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & _MASK


def key_table(keys: pl.Series, id_column: str) -> pl.DataFrame:
    """``key -> id`` for the distinct strings of ``keys`` (hashed once each, not per event)."""
    distinct = keys.drop_nulls().unique().sort()
    long = distinct.filter(distinct.str.len_chars() > MAX_KEY_CHARS)
    if long.len():
        raise DataError(f"string id longer than {MAX_KEY_CHARS} characters: {long[0][:60]!r}...")
    ids = pl.Series(id_column, [stable_id(k) for k in distinct.to_list()], dtype=pl.Int64)
    table = pl.DataFrame({KEY_OF[id_column]: distinct, id_column: ids})
    if table[id_column].n_unique() != table.height:
        clash = table.filter(pl.col(id_column).is_duplicated()).head(2)[KEY_OF[id_column]].to_list()
        raise DataError(f"string ids {clash} share one 63-bit raw id; rename one of them")
    return table


def with_stable_ids(frame: pl.LazyFrame, column: str, id_column: str, name: str) -> pl.LazyFrame:
    """``frame`` plus ``name``: the raw ids (``id_column``'s) of its string column ``column``, and
    the key column (``user_key``/``item_key``). The distinct strings are collected (streaming) and
    hashed once each; the log itself stays lazy."""
    keys = frame.select(pl.col(column).cast(pl.String)).unique().collect(engine="streaming").to_series()
    key = KEY_OF[id_column]
    table = key_table(keys, id_column).rename({id_column: name})
    return frame.with_columns(pl.col(column).cast(pl.String).alias(key)).join(
        table.lazy(), on=key, how="left", maintain_order="left"
    )

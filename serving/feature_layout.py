"""How features sit in Redis: key names and the packed binary record, shared by writer and reader.

Key layout (``prefix`` defaults to ``rf:v1``; ``rf:v1`` is the layout version)::

    {prefix}:current                     -> feature version name (the pointer readers follow)
    {prefix}:{version}:meta              -> JSON: feature names, history_len, counts, written_at
    {prefix}:{version}:user:{user_id}    -> record: float32 user dense + int64 history (raw item ids)
    {prefix}:{version}:item:{item_id}    -> record: float32 item dense + int64 genre indices

Records are keyed by raw ids, so one materialised version serves any model bundle: the server
maps raw ids to its own bundle's embedding rows. A record is one ``GET``/``MGET`` value (no hash
field round trips) and decodes with two ``np.frombuffer`` calls.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass

import numpy as np

from rankforge.errors import DataError

DEFAULT_PREFIX = "rf:v1"
RECORD_FORMAT = 1
_HEADER = struct.Struct("<BHH")  # record format, n dense float32, n int64 ids
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_name(value: str, what: str) -> str:
    """Prefixes and versions become key segments: no ``:`` or spaces that would alias keys."""
    parts = value.split(":") if what == "prefix" else [value]
    if not value or not all(_NAME.match(p) for p in parts):
        raise DataError(f"bad feature-store {what} {value!r}: use letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True)
class KeyLayout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_name(self.prefix, "prefix")

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:{version}:meta"

    def user(self, version: str, user_id: int) -> str:
        return f"{self.prefix}:{version}:user:{int(user_id)}"

    def item(self, version: str, item_id: int) -> str:
        return f"{self.prefix}:{version}:item:{int(item_id)}"


@dataclass(frozen=True)
class FeatureMeta:
    """What a version holds; the reader checks it against the ranker's dense features."""

    user_dense: list[str]
    item_dense: list[str]
    history_len: int
    n_users: int
    n_items: int
    written_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> FeatureMeta:
        try:
            return cls(**json.loads(raw))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"bad feature-store meta record: {exc}") from exc


@dataclass(frozen=True)
class Record:
    dense: np.ndarray  # float32 [n_dense]
    ids: np.ndarray  # int64 [n_ids]: history (raw item ids, oldest first) or genre indices


def pack(dense: np.ndarray, ids: np.ndarray) -> bytes:
    dense = np.ascontiguousarray(dense, dtype="<f4")
    ids = np.ascontiguousarray(ids, dtype="<i8")
    return _HEADER.pack(RECORD_FORMAT, dense.size, ids.size) + dense.tobytes() + ids.tobytes()


def unpack(raw: bytes) -> Record:
    if len(raw) < _HEADER.size:
        raise DataError(f"feature record too short ({len(raw)} bytes)")
    fmt, n_dense, n_ids = _HEADER.unpack_from(raw)
    if fmt != RECORD_FORMAT or len(raw) != _HEADER.size + 4 * n_dense + 8 * n_ids:
        raise DataError(f"feature record of format {fmt} and {len(raw)} bytes does not decode")
    dense = np.frombuffer(raw, dtype="<f4", count=n_dense, offset=_HEADER.size)
    ids = np.frombuffer(raw, dtype="<i8", count=n_ids, offset=_HEADER.size + 4 * n_dense)
    return Record(dense=dense, ids=ids)

"""How features sit in Redis: key names and the packed binary record, shared by writer and reader.

Key layout (``prefix`` defaults to ``rf:v1``; ``rf:v1`` is the layout version)::

    {prefix}:current                     -> feature version name (the pointer readers follow)
    {prefix}:writing:{version}           -> JSON: host, pid, heartbeat of a write in progress
    {prefix}:{version}:meta              -> JSON: feature names, history_len, counts, written_at
    {prefix}:{version}:user:{user_id}    -> record: float32 user dense + int64 lists: the history
                                            (raw item ids), each declared user id feature, then
                                            the seen items (raw item ids, sorted)
    {prefix}:{version}:items:{block}     -> Arrow IPC: item_id, the dense item features, each
                                            declared item id feature; ``meta.item_blocks`` blocks
                                            (``serving.item_table``: loaded once per version)

Which dense columns and id lists a record holds, in order, is the version's meta (the data's
feature spec). Records are keyed by raw ids and the history holds raw item ids, so one
materialised version serves any model bundle: the server maps raw ids to its own bundle's
embedding rows. Declared features hold vocabulary indices; the meta carries each vocabulary's
digest so a model trained with another vocabulary is refused instead of misread. A record is
one ``GET``/``MGET`` value (no hash field round trips) and decodes with ``np.frombuffer``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field

import numpy as np

from rankforge.errors import DataError

DEFAULT_PREFIX = "rf:v1"
#: The user record's last list: every item of the user's known events (``PreparedData.seen_items``),
#: which the server does not recommend. A version written before it existed lacks it: the server
#: then excludes the history only.
SEEN_ITEMS = "seen_items"
RECORD_FORMAT = 2
_HEADER = struct.Struct("<BHB")  # record format, n dense float32, n int64 id lists
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

    def writing(self, version: str) -> str:
        """The announcement of a write in progress (``*``: a pattern matching every one)."""
        return f"{self.prefix}:writing:{version}"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:{version}:meta"

    def user(self, version: str, user_id: int) -> str:
        return f"{self.prefix}:{version}:user:{int(user_id)}"

    def items(self, version: str, block: int) -> str:
        return f"{self.prefix}:{version}:items:{int(block)}"


@dataclass(frozen=True)
class FeatureMeta:
    """What a version holds; the reader checks it against the ranker's dense features."""

    user_dense: list[str]
    item_dense: list[str]
    history_len: int
    n_users: int
    n_items: int
    written_at: float
    user_lists: list[str] = field(default_factory=lambda: ["user_history"])  # id lists, in order
    item_lists: list[str] = field(default_factory=list)
    vocabularies: dict[str, str] = field(default_factory=dict)  # declared feature -> digest
    item_blocks: int = 0  # the items' Arrow IPC blocks (0: a version written before they existed)

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
    lists: tuple[np.ndarray, ...]  # int64 id lists, in the meta's user_lists / item_lists order

    @property
    def ids(self) -> np.ndarray:
        """A user record's history (raw item ids, oldest first): its first list."""
        return self.lists[0]


def pack(dense: np.ndarray, *lists: np.ndarray) -> bytes:
    dense = np.ascontiguousarray(dense, dtype="<f4")
    arrays = [np.ascontiguousarray(ids, dtype="<i8") for ids in lists]
    lengths = np.array([a.size for a in arrays], dtype="<u4")
    return (
        _HEADER.pack(RECORD_FORMAT, dense.size, len(arrays))
        + lengths.tobytes()
        + dense.tobytes()
        + b"".join(a.tobytes() for a in arrays)
    )


def unpack(raw: bytes) -> Record:
    if len(raw) < _HEADER.size:
        raise DataError(f"feature record too short ({len(raw)} bytes)")
    fmt, n_dense, n_lists = _HEADER.unpack_from(raw)
    at = _HEADER.size + 4 * n_lists
    if fmt != RECORD_FORMAT or len(raw) < at:
        raise DataError(f"feature record of format {fmt} and {len(raw)} bytes does not decode")
    lengths = np.frombuffer(raw, dtype="<u4", count=n_lists, offset=_HEADER.size)
    if len(raw) != at + 4 * n_dense + 8 * int(lengths.sum()):
        raise DataError(f"feature record of format {fmt} and {len(raw)} bytes does not decode")
    dense = np.frombuffer(raw, dtype="<f4", count=n_dense, offset=at)
    ids = np.frombuffer(raw, dtype="<i8", count=int(lengths.sum()), offset=at + 4 * n_dense)
    return Record(dense=dense, lists=tuple(np.split(ids, np.cumsum(lengths)[:-1])))

"""Materialise the feature pipeline's user and item tables into Redis as a new version.

Users are one record per key (a request reads one user); items are a few Arrow IPC blocks of
columns (``serving.item_table``), which a server loads once per version and holds in memory.

A version's lifetime, so that the one being served never expires under a server and a killed
write leaves nothing behind for long:

1. the write is announced (``{prefix}:writing:{version}``: host, pid, heartbeat) and every key is
   written (pipelined batches) with a short staging TTL (``staging_ttl_s``, an hour);
2. complete, its keys are made persistent, its meta written, then the ``current`` pointer is
   switched to it with one ``SET``: readers see either the old version or the complete new one,
   never a mix, and the current version has no TTL;
3. the previous version's keys get ``ttl_s``: a reader that resolved the old pointer a moment ago
   can still finish its request, then they expire.

A write that fails midway deletes what it wrote. One killed outright (SIGKILL, OOM) leaves keys
that expire with the staging TTL, and the next write removes them at once: an announced version
whose writer is gone (its process on this host, or no heartbeat for ``STALE_S``) is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import redis

from rankforge.errors import DataError
from rankforge.features.aggregates import dense_matrix
from rankforge.features.feature_spec import USER_HISTORY
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import BUILT_IN_COLUMNS
from rankforge.processes import alive
from rankforge.serving.feature_layout import SEEN_ITEMS, FeatureMeta, KeyLayout, check_name, pack
from rankforge.serving.item_table import BLOCK_ITEMS, ITEM_ID, encode_blocks

DEFAULT_TTL_S = 7 * 24 * 3600  # how long a replaced version stays readable
STAGING_TTL_S = 3600  # a version being written, until it is complete
STALE_S = 600.0  # an announced write without a heartbeat for this long is abandoned


@dataclass(frozen=True)
class WriteReport:
    version: str
    n_users: int
    n_items: int
    seconds: float


def new_version() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def user_lists(data: PreparedData) -> list[str]:
    """The id lists of a user record, in order: the history, the declared user features, then
    the seen items."""
    return [USER_HISTORY, *(s.name for s in data.inputs.declared("user")), SEEN_ITEMS]


def item_lists(data: PreparedData) -> list[str]:
    return [s.name for s in data.inputs.declared("item")]


def _lists(frame: pl.DataFrame, columns: list[str]) -> Iterator[list[np.ndarray]]:
    if not columns:
        yield from ([] for _ in range(frame.height))
        return
    series = [frame[c] for c in columns]
    for values in zip(*series, strict=True):
        yield [np.asarray(v if v is not None else [], dtype=np.int64) for v in values]


def user_records(data: PreparedData) -> Iterator[tuple[int, bytes]]:
    """(raw user id, record): dense user features, the latest history as raw item ids, the
    declared user id features, then the seen items as raw item ids."""
    item_id_of = _raw_item_ids(data)
    users = (
        data.user_features.join(data.mapping.users, on="user_idx", how="inner")
        .join(data.seen_items(), on="user_idx", how="left", maintain_order="left")
        .with_columns(pl.col("seen").fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
    )
    dense = dense_matrix(users, data.inputs.user_dense)
    columns = [BUILT_IN_COLUMNS.get(name, name) for name in user_lists(data)[:-1]] + ["seen"]
    for row, (user_id, lists) in enumerate(zip(users["user_id"], _lists(users, columns), strict=True)):
        yield int(user_id), pack(dense[row], item_id_of[lists[0]], *lists[1:-1], item_id_of[lists[-1]])


def item_frame(data: PreparedData) -> pl.DataFrame:
    """Every item's row: ``item_id`` (raw), the dense item features (float32, nulls and NaNs as 0,
    as training sees them) and the declared item id features (vocabulary indices)."""
    items = data.item_features
    dense = dense_matrix(items, data.inputs.item_dense)
    return pl.DataFrame(
        {
            ITEM_ID: items["item_id"].cast(pl.Int64),
            **{name: dense[:, j] for j, name in enumerate(data.inputs.item_dense)},
            **{name: items[name].cast(pl.List(pl.Int64)) for name in item_lists(data)},
        }
    )


def _raw_item_ids(data: PreparedData) -> np.ndarray:
    items = data.mapping.items.sort("item_idx")
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(items.height)):
        raise DataError("id mapping: item indices are not 0..n-1")
    return items["item_id"].to_numpy().astype(np.int64)


class FeatureWriter:
    """Writes a data snapshot as a new feature version and makes it current (see the module
    docstring for the version's lifetime). ``ttl_s``: how long a replaced version stays readable."""

    def __init__(
        self,
        client: redis.Redis,
        layout: KeyLayout | None = None,
        ttl_s: int = DEFAULT_TTL_S,
        batch_size: int = 1000,
        block_items: int = BLOCK_ITEMS,
        staging_ttl_s: int = STAGING_TTL_S,
    ) -> None:
        if ttl_s < 1 or batch_size < 1 or staging_ttl_s < 1:
            raise DataError(
                f"ttl_s, staging_ttl_s and batch_size must be >= 1, got {ttl_s}, {staging_ttl_s} "
                f"and {batch_size}"
            )
        self.client = client
        self.layout = layout or KeyLayout()
        self.ttl_s = ttl_s
        self.staging_ttl_s = staging_ttl_s
        self.batch_size = batch_size
        self.block_items = block_items

    def write(self, data: PreparedData, version: str | None = None) -> WriteReport:
        """Write every user and item under ``version`` (new if None), then make it current."""
        start = time.perf_counter()
        version = check_name(version or new_version(), "version")
        if version in ("writing", "current"):
            raise DataError(f"feature version {version!r} is a name the key layout uses; choose another")
        current = self.client.get(self.layout.current)
        if current is not None and current.decode() == version:
            raise DataError(f"feature version {version!r} is live; write a new version instead")
        self.remove_abandoned()
        self._announce(version)
        try:
            n_users = self._write_batches(
                version, ((self.layout.user(version, uid), record) for uid, record in user_records(data))
            )
            items = item_frame(data)
            blocks = encode_blocks(items, self.block_items)
            self._write_batches(
                version, ((self.layout.items(version, n), block) for n, block in enumerate(blocks))
            )
            meta = FeatureMeta(
                user_dense=list(data.inputs.user_dense),
                item_dense=list(data.inputs.item_dense),
                user_lists=user_lists(data),
                item_lists=item_lists(data),
                vocabularies=data.vocabulary_digests(),
                history_len=data.history_len,
                n_users=n_users,
                n_items=items.height,
                item_blocks=len(blocks),
                written_at=time.time(),
            )
            self._expire(version, None)  # complete: it lives as long as it is current
            self.client.set(self.layout.meta(version), meta.to_json())
            self.client.set(self.layout.current, version)  # the switch: one atomic SET
        except BaseException:
            self._discard(version)  # a half-written version is never left behind (nor made current)
            raise
        self.client.delete(self.layout.writing(version))
        if current is not None:
            self._expire(current.decode(), self.ttl_s)  # the replaced version, once readers are done
        return WriteReport(version, n_users, items.height, time.perf_counter() - start)

    def remove_abandoned(self) -> list[str]:
        """Delete the versions whose write was announced and whose writer is gone (its process on
        this host has ended, or its heartbeat is older than ``STALE_S``); returns their names."""
        removed = []
        for key in self.client.scan_iter(f"{self.layout.writing('*')}", count=1000):
            version = key.decode().rsplit(":", 1)[-1]
            raw = self.client.get(key)
            try:
                note = json.loads(raw) if raw is not None else {}
            except ValueError:
                note = {}
            if not _abandoned(note):
                continue
            current = self.client.get(self.layout.current)
            if current is None or current.decode() != version:  # never the live one
                self._discard(version)
                removed.append(version)
            self.client.delete(key)
        return removed

    def _announce(self, version: str) -> None:
        note = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        self.client.set(self.layout.writing(version), json.dumps(note))

    def _discard(self, version: str) -> None:
        """Delete whatever was written under ``version``; if Redis is what failed, the keys'
        staging TTL removes them later."""
        with contextlib.suppress(redis.RedisError, OSError):
            keys = list(self.client.scan_iter(f"{self.layout.prefix}:{version}:*", count=1000))
            for start in range(0, len(keys), self.batch_size):
                self.client.delete(*keys[start : start + self.batch_size])
            self.client.delete(self.layout.writing(version))

    def _expire(self, version: str, ttl_s: int | None) -> int:
        """Give every key of ``version`` the TTL ``ttl_s`` (None: no TTL); returns how many."""
        count = 0
        pipe = self.client.pipeline(transaction=False)
        for key in self.client.scan_iter(f"{self.layout.prefix}:{version}:*", count=1000):
            if ttl_s is None:
                pipe.persist(key)
            else:
                pipe.expire(key, ttl_s)
            count += 1
            if count % self.batch_size == 0:
                pipe.execute()
        pipe.execute()
        return count

    def _write_batches(self, version: str, records: Iterator[tuple[str, bytes]]) -> int:
        """Write ``records`` with the staging TTL, the announcement's heartbeat renewed on the way."""
        count, beat = 0, time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        for key, value in records:
            pipe.set(key, value, ex=self.staging_ttl_s)
            count += 1
            if count % self.batch_size == 0:
                pipe.execute()
                if time.monotonic() - beat > STALE_S / 10:
                    self._announce(version)
                    beat = time.monotonic()
        pipe.execute()
        return count


def _abandoned(note: dict) -> bool:
    """Whether the writer an announcement names is gone."""
    heartbeat = note.get("heartbeat")
    if not isinstance(heartbeat, int | float) or time.time() - heartbeat > STALE_S:
        return True
    pid = note.get("pid")
    return note.get("host") == socket.gethostname() and isinstance(pid, int) and not alive(pid)

"""Read a request's user features from Redis in one round trip; hold each version's items in memory.

A request sends ``GET {prefix}:current`` and ``GET`` of the user's record in a single pipelined
write on one connection: one round trip, the user only. Items never cost a request a read: a
feature version is immutable, so its item features are loaded once into an in-process columnar
table (``serving.item_table``) and every request of that version looks its items up there.

Version switch policy: **the previous version answers until the next one is loaded.** When a
read sees the pointer on another version, a background thread loads that version's meta and item
blocks while requests go on being answered, whole, from the version already held (the writer
leaves old versions to expire, so their user records are still there); the next read after the
load switches over. No request waits for a catalogue load, and no answer mixes two versions. Only
the very first version a reader serves is loaded in the request's path (``FeatureReader.warm``
does it at server start).

Replies are read with an explicit timeout taken from the caller's remaining deadline, and the
client never retries, so a dead or stalled Redis costs at most that budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError
from redis.retry import Retry

from rankforge.errors import ConfigError, DataError, RankforgeError
from rankforge.serving.feature_layout import FeatureMeta, KeyLayout, Record, unpack
from rankforge.serving.item_table import ItemTable, decode_blocks
from rankforge.serving.redis_urls import CLUSTER_SCHEME, check_url, masked, parse_cluster

log = logging.getLogger(__name__)


class FeatureStoreUnavailable(RuntimeError):
    """Redis did not answer in time, refused the connection, or (a cluster) is failing over."""


#: Replies that say "not now" rather than "wrong": a cluster with a slot uncovered or failing over,
#: a replica loading its data. A client retries those (UNAVAILABLE), never a corrupt store.
TRANSIENT_REPLIES = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")


def _transient(exc: Exception) -> bool:
    return isinstance(exc, ClusterDownError | TryAgainError | MasterDownError) or str(exc).startswith(
        TRANSIENT_REPLIES
    )


class FeatureStoreEmpty(RankforgeError):
    """No feature version has been materialised under this prefix."""


class FeatureStoreCorrupt(DataError):
    """A key holds something the feature layout never writes (another Redis type, say)."""


@dataclass(frozen=True)
class FeatureVersion:
    """One feature version as a server holds it: its name, meta and every item's features."""

    name: str
    meta: FeatureMeta
    items: ItemTable


@dataclass(frozen=True)
class FeatureRead:
    """One request's read: the version it was answered from and the user's record."""

    held: FeatureVersion
    user: Record | None  # None: the user has no record (or none was asked for)

    @property
    def version(self) -> str:
        return self.held.name

    @property
    def meta(self) -> FeatureMeta:
        return self.held.meta

    @property
    def items(self) -> ItemTable:
        """The version's items: ``items.rows(raw_ids)`` finds a request's."""
        return self.held.items


def connect(url: str, timeout_s: float = 0.25, max_connections: int = 64) -> redis.Redis:
    """A client that fails fast: short connect/socket timeouts and no retries.

    ``timeout_s`` caps every socket operation; reads of request replies are further bounded by the
    request's remaining deadline (see :meth:`FeatureReader.read`). A ``rediscluster://h:p,h:p``
    URL gives a Redis Cluster client (its nodes are discovered from any of those given).
    """
    check_url(url)
    if url.startswith(CLUSTER_SCHEME):
        cluster = parse_cluster(url)
        try:  # a cluster client discovers its slots now, so a dead cluster shows at startup
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
                username=cluster.username,
                password=cluster.password,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
                protocol=2,
            )
        except (RedisClusterException, redis.RedisError, OSError) as exc:
            raise ConfigError(f"Redis Cluster at {masked(url)} does not answer: {str(exc)[:120]}") from exc
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            # RESP2 and no CLIENT SETINFO: connecting sends no handshake (for db 0 without auth), so a
            # stalled server stalls only reads, and those are bounded by the request's deadline.
            protocol=2,
            driver_info=None,
        )
        # the pool builds connections lazily: build one now (no I/O) so an unknown query argument
        # fails here, in one line, not as a TypeError inside the first request
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
        return client
    except (TypeError, ValueError) as exc:  # e.g. an unknown query argument, a bad timeout
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Redis URL {masked(url)!r} is not usable: {masked(reason)[:160]}") from None


class FeatureReader:
    """Reads one request's user record; holds the served version's items (see the module policy).

    ``load_timeout_s`` bounds loading one version (its meta and item blocks), which runs at most
    once per version, off the request path except for the first version served. ``on_load`` is
    called with each loaded version's items before any request is answered from them (the server
    joins them with its models' id spaces there); if it raises, the version failed to load.
    """

    #: Seconds before a version whose load failed is tried again (reads keep seeing its pointer).
    RETRY_S = 10.0

    def __init__(
        self,
        client: redis.Redis,
        layout: KeyLayout | None = None,
        load_timeout_s: float = 60.0,
        on_load: Callable[[ItemTable], None] | None = None,
    ) -> None:
        self.client = client
        self.layout = layout or KeyLayout()
        self.load_timeout_s = load_timeout_s
        self.on_load = on_load
        self._served: FeatureVersion | None = None
        self._lock = threading.Lock()
        self._loading: str | None = None  # the version a background thread is loading
        self._loaded: FeatureVersion | None = None  # loaded, switched to by the next read
        self._failed: tuple[str, float] = ("", 0.0)  # (version, when): a failed load is retried later

    @property
    def served(self) -> FeatureVersion | None:
        """The version requests are answered from (None before the first read)."""
        return self._served

    def warm(self) -> FeatureVersion | None:
        """Load the current version now (server start), if there is one."""
        (current,) = self._round_trip([("GET", self.layout.current)], time.monotonic() + self.load_timeout_s)
        if current is None:
            return None
        self._served = self._load(current.decode())
        return self._served

    def missing(self, timeout_s: float = 1.0) -> str | None:
        """Why no request can be answered from the store now -- no version is current, or the
        current one's meta is gone (expired or deleted) -- or None when it is there. A store that
        does not answer raises ``FeatureStoreUnavailable`` (a transient fault, not a missing one)."""
        deadline = time.monotonic() + timeout_s
        (current,) = self._round_trip([("GET", self.layout.current)], deadline)
        if current is None:
            return f"no feature version is current under {self.layout.current!r}: run rankforge materialize"
        version = current.decode()
        (meta,) = self._round_trip([("GET", self.layout.meta(version))], deadline)
        if meta is None:
            return (
                f"the current feature version {version!r} has no meta record (expired or deleted): "
                "run rankforge materialize"
            )
        return None

    def read(self, user_id: int | None, timeout_s: float) -> FeatureRead:
        """The user's record (if ``user_id`` is given) and the served version's items."""
        deadline = time.monotonic() + timeout_s
        served = self._served
        for _ in range(2):  # a second pass only to switch to a version loaded meanwhile
            commands: list[tuple] = [("GET", self.layout.current)]
            if served is not None and user_id is not None:
                commands.append(("GET", self.layout.user(served.name, user_id)))
            replies = self._round_trip(commands, deadline)
            if replies[0] is None:
                raise FeatureStoreEmpty(f"no feature version is current under {self.layout.current!r}")
            current = replies[0].decode()
            if served is None:  # the first version this reader serves: loaded in the request's path
                served = self._served = self._load(current)
                continue
            if current != served.name:
                loaded = self._switch_to(current)
                if loaded is not None:
                    served = loaded
                    continue
            user = replies[1] if len(replies) > 1 else None
            return FeatureRead(served, unpack(user) if user is not None else None)
        raise FeatureStoreUnavailable("feature version changed during the read; retry")

    def _switch_to(self, current: str) -> FeatureVersion | None:
        """The version to serve now that the pointer names ``current``: the loaded one when it is
        ready (it becomes the served version), else None after starting its load if needed."""
        with self._lock:
            loaded = self._loaded
            if loaded is not None and loaded.name == current:
                self._served, self._loaded = loaded, None
                log.info("serving feature version %s (%d items)", current, len(loaded.items))
                return loaded
            failed, when = self._failed
            if self._loading is not None or (failed == current and time.monotonic() - when < self.RETRY_S):
                return None
            self._loading = current
        threading.Thread(target=self._load_in_background, args=(current,), daemon=True).start()
        return None

    def _load_in_background(self, version: str) -> None:
        try:
            loaded = self._load(version)
        except Exception as exc:  # a thread's boundary: whatever failed, the held version serves on
            log.error(
                "feature version %s could not be loaded; still serving the previous one: %s", version, exc
            )
            with self._lock:
                self._loading, self._failed = None, (version, time.monotonic())
            return
        with self._lock:
            self._loading, self._loaded = None, loaded

    def _load(self, version: str) -> FeatureVersion:
        """A version's meta and its item table, read in two round trips."""
        deadline = time.monotonic() + self.load_timeout_s
        meta = self._load_meta(version, deadline)
        if meta.item_blocks == 0:
            raise FeatureStoreEmpty(
                f"feature version {version!r} holds no item blocks (written by an older rankforge): "
                "run materialize again"
            )
        blocks = self._round_trip(
            [("GET", self.layout.items(version, n)) for n in range(meta.item_blocks)], deadline
        )
        absent = [n for n, block in enumerate(blocks) if block is None]
        if absent:
            raise FeatureStoreEmpty(
                f"feature version {version!r} lacks item block(s) {absent[:5]} (expired?)"
            )
        items = decode_blocks(blocks, meta.item_dense, meta.item_lists)
        if len(items) != meta.n_items:
            raise DataError(
                f"feature version {version!r}: {len(items)} items in its blocks, meta says {meta.n_items}"
            )
        if self.on_load is not None:
            self.on_load(items)
        return FeatureVersion(version, meta, items)

    def _cluster_round_trip(self, commands: list[tuple]) -> list:
        """The same replies from a Redis Cluster: the keys of a request live on several nodes
        (MGET cannot cross slots), so every key is a GET in one non-transactional pipeline, which
        redis-py sends as one batch per node -- one round trip per node that holds any of the
        request's keys. Bounded by the client's socket timeout (the Redis budget) per node."""
        pipe = self.client.pipeline(transaction=False)
        sizes = []
        for name, *keys in commands:
            for key in keys:
                pipe.get(key)
            sizes.append(None if name == "GET" else len(keys))
        try:
            flat = pipe.execute(raise_on_error=True)
        except redis.ResponseError as exc:
            if _transient(exc):  # CLUSTERDOWN, TRYAGAIN, ...: the cluster is failing over
                raise FeatureStoreUnavailable(f"Redis Cluster unavailable: {str(exc)[:160]}") from exc
            raise FeatureStoreCorrupt(f"feature store error: {str(exc)[:160]}") from exc
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException, OSError) as exc:
            raise FeatureStoreUnavailable(f"Redis Cluster did not answer: {str(exc)[:160]}") from exc
        replies, at = [], 0
        for size in sizes:
            if size is None:
                replies.append(flat[at])
                at += 1
            else:
                replies.append(list(flat[at : at + size]))
                at += size
        return replies

    def _load_meta(self, version: str, deadline: float) -> FeatureMeta:
        (raw,) = self._round_trip([("GET", self.layout.meta(version))], deadline)
        if raw is None:
            raise FeatureStoreEmpty(f"feature version {version!r} has no meta record (expired?)")
        return FeatureMeta.from_json(raw)

    def _round_trip(self, commands: list[tuple], deadline: float) -> list:
        """Send all commands in one write and read their replies, each bounded by ``deadline``."""
        if isinstance(self.client, RedisCluster):
            return self._cluster_round_trip(commands)
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise FeatureStoreUnavailable(f"Redis unreachable: {exc}") from exc
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = []
            for _ in commands:
                remaining = deadline - time.monotonic()
                # Spent budget: the reply may have arrived while this thread waited for a CPU (a
                # busy server), not for Redis; only a reply that is not there yet is Redis's delay.
                if remaining <= 0 and not conn.can_read(timeout=0):
                    raise redis.TimeoutError("request budget spent waiting for Redis")
                replies.append(conn.read_response(timeout=max(remaining, 0.001)))
            return replies
        except redis.ResponseError as exc:
            conn.disconnect()  # later replies of this pipeline are still on the socket
            raise FeatureStoreCorrupt(
                f"feature store error on {commands[0][0]} {str(commands[0][1])[:80]!r}: {str(exc)[:120]}"
            ) from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            conn.disconnect()  # a reply may still be in flight: never reuse this socket
            raise FeatureStoreUnavailable(f"Redis did not answer: {exc}") from exc
        finally:
            pool.release(conn)

"""Read a request's features from Redis in one round trip, within the request's time budget.

Each read sends ``GET {prefix}:current`` and one ``MGET`` of the user's and/or items' keys in a
single pipelined write on one connection, so a request costs one round trip; the cached version is
only re-resolved (a second round trip) when the pointer has moved. Replies are read with an
explicit timeout taken from the caller's remaining deadline, and the client never retries, so a
dead or stalled Redis costs at most that budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError
from redis.retry import Retry

from rankforge.errors import ConfigError, DataError, RankforgeError
from rankforge.serving.feature_layout import FeatureMeta, KeyLayout, Record, unpack
from rankforge.serving.redis_urls import CLUSTER_SCHEME, masked, parse_cluster


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
class FeatureRead:
    version: str
    meta: FeatureMeta
    user: Record | None  # None: the user has no record
    items: list[Record | None]  # in the order asked for


def connect(url: str, timeout_s: float = 0.25, max_connections: int = 64) -> redis.Redis:
    """A client that fails fast: short connect/socket timeouts and no retries.

    ``timeout_s`` caps every socket operation; reads of request replies are further bounded by the
    request's remaining deadline (see :meth:`FeatureReader.read`). A ``rediscluster://h:p,h:p``
    URL gives a Redis Cluster client (its nodes are discovered from any of those given).
    """
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
    return redis.Redis.from_url(
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


class FeatureReader:
    """Reads one request's features; item records are cached in process per feature version.

    A feature version is immutable once written (a new one gets a new name and the pointer moves),
    so an item's record -- or its absence -- never changes within a version. Caching them removes
    the retrieval path's second Redis round trip (the retrieved items' records) for every item
    seen before; the cache is dropped when the version changes and cleared when it exceeds
    ``item_cache_size`` records (0 disables it). User records are never cached: they carry the
    user's latest history.
    """

    def __init__(
        self, client: redis.Redis, layout: KeyLayout | None = None, item_cache_size: int = 500_000
    ) -> None:
        self.client = client
        self.layout = layout or KeyLayout()
        self._version: str | None = None
        self._meta: FeatureMeta | None = None
        self.item_cache_size = item_cache_size
        self._items: tuple[str, dict[int, Record | None]] = ("", {})  # (version, item id -> record)

    def read(self, user_id: int | None, item_ids: Sequence[int], timeout_s: float) -> FeatureRead:
        """The user's record (if ``user_id`` is given) and the items' records, one version."""
        deadline = time.monotonic() + timeout_s
        version = self._version
        for _ in range(2):  # a second pass only when the pointer moved under the cached version
            keys = self._keys(version, user_id, item_ids) if version else []
            commands: list[tuple] = [("GET", self.layout.current)]
            if keys:
                commands.append(("MGET", *keys))
            replies = self._round_trip(commands, deadline)
            current = replies[0].decode() if replies[0] is not None else None
            if current is None:
                raise FeatureStoreEmpty(f"no feature version is current under {self.layout.current!r}")
            if current == version and keys:
                values = replies[1]
                break
            version = current
            self._meta = self._load_meta(version, deadline)
            self._version = version
        else:  # pragma: no cover - the pointer moved twice within one request
            raise FeatureStoreUnavailable("feature version changed during the read; retry")
        assert self._meta is not None
        user_raw, item_raw = (values[0], values[1:]) if user_id is not None else (None, values)
        return FeatureRead(
            version=version,
            meta=self._meta,
            user=unpack(user_raw) if user_raw is not None else None,
            items=[unpack(v) if v is not None else None for v in item_raw],
        )

    def read_items(self, version: str, item_ids: Sequence[int], timeout_s: float) -> list[Record | None]:
        """Items of a version already resolved by :meth:`read` (the retrieval path's 2nd step);
        only items not in the cache cost a round trip."""
        if not item_ids:
            return []
        cache = self._item_cache(version)
        missing = [i for i in dict.fromkeys(item_ids) if i not in cache]
        if missing:
            keys = [self.layout.item(version, i) for i in missing]
            (values,) = self._round_trip([("MGET", *keys)], time.monotonic() + timeout_s)
            fetched = {i: unpack(v) if v is not None else None for i, v in zip(missing, values, strict=True)}
            self._remember(cache, fetched)
        else:
            fetched = {}
        return [fetched[i] if i in fetched else cache[i] for i in item_ids]

    def _item_cache(self, version: str) -> dict[int, Record | None]:
        cached_version, cache = self._items
        if cached_version != version:
            cache = {}
            self._items = (version, cache)  # one assignment: readers see the old or the new cache
        return cache

    def _remember(self, cache: dict[int, Record | None], records: dict[int, Record | None]) -> None:
        if self.item_cache_size <= 0:
            return
        if len(cache) + len(records) > self.item_cache_size:
            cache.clear()
        cache.update(records)

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

    def _keys(self, version: str, user_id: int | None, item_ids: Sequence[int]) -> list[str]:
        users = [self.layout.user(version, user_id)] if user_id is not None else []
        return users + [self.layout.item(version, i) for i in item_ids]

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

"""Redis URLs as the platform takes them, and as it shows them: never with their password.

``redis://[user:password@]host:port/db`` (``rediss://`` for TLS) names one server;
``rediscluster://[user:password@]host:port[,host:port...]`` names a Redis Cluster by any of its
nodes. A URL may come from ``--redis-url`` or ``RANKFORGE_REDIS_URL`` and carry credentials, so
everything that prints or logs one (warnings, errors, ``--help`` defaults) prints :func:`masked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from rankforge.errors import DataError

CLUSTER_SCHEME = "rediscluster://"


def masked(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``; cut to 200 characters."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url[:200]
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}"
    elif at:  # redis://password@host: a bare userinfo is the password
        netloc = f"***@{hosts}"
    return f"{scheme}://{netloc}{slash}{path}"[:200]


@dataclass(frozen=True)
class ClusterUrl:
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None


def parse_cluster(url: str) -> ClusterUrl:
    """The nodes and credentials of a ``rediscluster://`` URL."""
    rest = url.removeprefix(CLUSTER_SCHEME).strip("/")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if colon else (None, unquote(user))
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise DataError(f"cluster URL {masked(url)!r}: expected host:port[,host:port...]")
        nodes.append((host, int(port)))
    return ClusterUrl(nodes, username, password)

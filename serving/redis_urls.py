"""Redis URLs as the platform takes them, and as it shows them: never with their password.

``redis://[user:password@]host:port/db`` (``rediss://`` for TLS) names one server;
``rediscluster://[user:password@]host:port[,host:port...]`` names a Redis Cluster by any of its
nodes. A URL may come from ``--redis-url`` or ``RANKFORGE_REDIS_URL`` and carry credentials, so
everything that prints or logs one (warnings, errors, ``--help`` defaults) prints :func:`masked`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from rankforge.errors import ConfigError, DataError

CLUSTER_SCHEME = "rediscluster://"


#: Query arguments that carry a secret (redis-py reads ``?password=``).
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pass|requirepass)=)[^&#]*", re.IGNORECASE)
SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)


def masked(url: str) -> str:
    """``url`` with every password replaced by ``***``; cut to 200 characters.

    A password is a query argument's (``?password=PW``) or the userinfo's: everything up to the
    URL's last ``@`` after the scheme, whatever it holds (an unencoded ``/``, ``?`` or ``@`` of a
    password included) -- masking too much beats printing a secret."""
    url = _SECRET_QUERY.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url[:200]
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:***@{hosts}"
    elif at:  # redis://password@host: a bare userinfo is the password
        rest = f"***@{hosts}"
    return f"{scheme}://{rest}"[:200]


def check_url(url: str) -> None:
    """A one-line ``ConfigError`` for a URL no Redis client reads (another scheme, e.g. ``http://``)
    -- said before anything else is done with it."""
    if not url.startswith(SCHEMES):
        raise ConfigError(f"Redis URL {masked(url)!r}: expected one of {', '.join(SCHEMES)}")


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

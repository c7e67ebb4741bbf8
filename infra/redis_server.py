"""Make sure a Redis answers on the configured URL, starting a local one if allowed.

Only a server on this machine is ever started (loopback, no persistence): the embedded default for
development and CI. A remote URL that does not answer is reported, never "fixed".
"""

from __future__ import annotations

import shutil
import subprocess
import time
from urllib.parse import urlparse

import redis

from rankforge.serving.redis_urls import masked

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def ping(url: str, timeout_s: float = 0.5) -> bool:
    try:
        return bool(
            redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False


def ensure_redis(url: str = "redis://127.0.0.1:6379/0", wait_s: float = 10.0) -> None:
    """Return when ``url`` answers PING; start ``redis-server`` for a local URL that does not."""
    if ping(url):
        return
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in LOCAL_HOSTS:
        raise RuntimeError(
            f"Redis at {masked(url)} does not answer (not starting one: the host is not local)"
        )
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"Redis at {masked(url)} does not answer and redis-server is not installed")
    subprocess.run(
        [
            binary,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ping(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"started redis-server on port {port} but {masked(url)} still does not answer")


if __name__ == "__main__":
    import os

    ensure_redis(os.environ.get("RANKFORGE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    print("redis ok")

"""Start (and stop) a local Redis Cluster of N primaries on loopback, for tests and development.

Each node is a ``redis-server --cluster-enabled yes`` on a free port with no persistence; the
slots are assigned with ``redis-cli --cluster create``. Only ever local: this is a fixture, not a
way to run production Redis.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis needs port <= 55535."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20_000, 45_000)
        if port not in taken and _free(port) and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a local cluster node")


@dataclass
class LocalCluster:
    ports: list[int]
    directory: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    password: str | None = None  # every node's requirepass (and masterauth)

    @property
    def url(self) -> str:
        """The cluster URL rankforge reads (``rediscluster://[:password@]host:port,host:port,...``)."""
        credentials = f":{self.password}@" if self.password else ""
        return f"rediscluster://{credentials}" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(port=port, password=self.password)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(nodes: int = 3, wait_s: float = 20.0, password: str | None = None) -> LocalCluster:
    """A running ``nodes``-primary cluster whose every slot is served (cluster_state:ok); with
    ``password``, every node requires it."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("a local Redis Cluster needs redis-server and redis-cli on PATH")
    ports: list[int] = []
    for _ in range(nodes):
        ports.append(_free_port(ports))
    cluster = LocalCluster(ports, Path(tempfile.mkdtemp(prefix="rf-cluster-")), password=password)
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    try:
        for port in cluster.ports:
            cluster.processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--dir",
                        str(cluster.directory),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        *auth,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + wait_s
        for port in cluster.ports:
            while not _answers(port, password):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on port {port} did not start")
                time.sleep(0.05)
        addresses = [f"127.0.0.1:{p}" for p in cluster.ports]
        auth_cli = ["-a", password] if password else []
        subprocess.run(
            [cli, *auth_cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=wait_s,
        )
        while cluster.node(cluster.ports[0]).cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _answers(port: int, password: str | None = None) -> bool:
    try:
        client = redis.Redis(port=port, password=password, socket_connect_timeout=0.2, socket_timeout=0.2)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def main() -> int:
    """``python -m rankforge.infra.redis_cluster [NODES]``: start a local cluster, print its URL,
    keep it until interrupted (development: a server and ``materialize`` on a real cluster)."""
    import signal
    import sys

    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the nodes on SIGTERM too
    cluster = start_cluster(nodes)
    print(cluster.url, flush=True)
    try:
        while all(p.poll() is None for p in cluster.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The gRPC server: the ranking service plus standard health checking and reflection.

Lifecycle: the Redis URL is checked, then models are loaded (from the registry or bundle
directories) before the port reports SERVING; a background thread refreshes them; on
SIGTERM/SIGINT health turns NOT_SERVING (so load balancers stop routing) and ``server.stop(grace)``
lets in-flight requests finish. A server that fails to start (a port in use) removes the models it
downloaded.

Threads policy: the transport is ``grpc.aio`` on one event loop thread; a call holds a worker
thread only while its handler runs. The thread-pool server read each request on a worker thread,
so 2 x workers + 2 calls that sent their headers and never their message held every thread (health
checks and valid calls ended DEADLINE_EXCEEDED for as long as they were held). Here a call that has
not delivered its message waits on the loop at the cost of a few kilobytes, bounded per connection
by HTTP/2's ``max_concurrent_streams``; the token check (an interceptor), health checks and
reflection are coroutines on the loop, so they answer whatever the Rank/Auction workers are doing.
Rank/Auction run on a pool of 2 x ``workers`` + 2 threads (``workers`` running, as many waiting
for a slot: ``ServiceLimits.max_concurrent``; a call past them is answered RESOURCE_EXHAUSTED at
once, on a spare thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from rankforge.errors import RankforgeError
from rankforge.serving.feature_layout import DEFAULT_PREFIX, KeyLayout
from rankforge.serving.feature_reader import FeatureReader, FeatureStoreUnavailable, connect
from rankforge.serving.item_table import ItemTable
from rankforge.serving.model_source import ModelSource, ModelWatcher
from rankforge.serving.proto import SERVICE_NAME, ranking_pb2
from rankforge.serving.ranking_service import RankingService, ServiceLimits, safe_deserializer
from rankforge.serving.security import BearerTokenInterceptor, TlsConfig, check_exposure

log = logging.getLogger(__name__)
T = TypeVar("T")

#: HTTP/2 streams one connection may hold open at once (calls started and not yet answered).
MAX_STREAMS_PER_CONNECTION = 100
#: Worker threads beyond the Rank/Auction cap (running + waiting): a call past the cap finds one
#: and is answered RESOURCE_EXHAUSTED at once instead of queueing for a thread.
SPARE_WORKERS = 2
DEFAULT_RETRIEVAL = "models:/rankforge-retrieval@champion"
DEFAULT_RANKER = "models:/rankforge-ranker@champion"


@dataclass(frozen=True)
class ServerConfig:
    retrieval: str = DEFAULT_RETRIEVAL  # models:/ URI or bundle directory
    ranker: str = DEFAULT_RANKER
    redis_url: str = "redis://127.0.0.1:6379/0"
    feature_prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (see RankingServer.port)
    workers: int = 8
    ort_threads: int = 1  # per session; requests run in parallel on the worker threads
    refresh_interval_s: float = 30.0  # 0 disables model refresh
    feature_check_s: float = 10.0  # how often the current feature version is checked (0: never)
    grace_s: float = 5.0
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    ad_ranker: str | None = None  # the Auction RPC's model (models:/rankforge-ad-ranker@champion)
    auction_rule: str = "gsp"  # or "first_price"
    tls: TlsConfig | None = None  # None: plaintext, allowed on loopback only (see security)
    auth_token: str | None = None  # set: every RPC but health needs "authorization: Bearer <token>"
    allow_insecure: bool = False  # plaintext on a non-loopback interface, explicitly forced
    reuse_port: bool = False  # SO_REUSEPORT: several server processes share one port (serve --processes)
    exclude_seen: bool = True  # leave out the user's seen items unless a request says otherwise


def service_handler(service: RankingService) -> grpc.GenericRpcHandler:
    """The RankingService methods, registered with deserializers that never raise (see
    ``safe_deserializer``): bytes that are not a valid request answer INVALID_ARGUMENT."""

    def method(call, request_type, response_type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=safe_deserializer(request_type),
            response_serializer=response_type.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Rank": method(service.Rank, ranking_pb2.RankRequest, ranking_pb2.RankResponse),
            "Auction": method(service.Auction, ranking_pb2.AuctionRequest, ranking_pb2.AuctionResponse),
        },
    )


class RankingServer:
    """One server: ``RankingServer(config).start()``, then ``stop(grace)`` (see the module docstring
    for the threads it runs)."""

    def __init__(self, config: ServerConfig) -> None:
        check_exposure(config.host, config.tls, config.allow_insecure)  # before loading anything
        self.config = config
        # the URL is checked before any model is downloaded (no I/O for a single server)
        client = connect(
            config.redis_url, timeout_s=config.limits.redis_timeout_s, max_connections=config.workers * 2
        )
        self.watcher = ModelWatcher(
            ModelSource(config.retrieval),
            ModelSource(config.ranker),
            ort_threads=config.ort_threads,
            ad_ranker=None if config.ad_ranker is None else ModelSource(config.ad_ranker),
            on_failure=self._refresh_failed,
            on_swap=self._swapped,
        )
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._features_missing: str | None = None  # why the feature store cannot answer (health)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="rankforge-grpc", daemon=True
        )
        self._pool = futures.ThreadPoolExecutor(
            max_workers=2 * config.workers + SPARE_WORKERS, thread_name_prefix="rankforge-rpc"
        )
        try:
            self.reader = FeatureReader(client, KeyLayout(config.feature_prefix), on_load=self._join_items)
            limits = replace(config.limits, max_concurrent=config.limits.max_concurrent or config.workers)
            self.service = RankingService(
                lambda: self.watcher.models,
                self.reader,
                limits,
                auction_rule=config.auction_rule,
                exclude_seen=config.exclude_seen,
            )
            # the token check (None: no token): counts the calls it rejects (`auth.rejected`)
            self.auth = BearerTokenInterceptor(config.auth_token) if config.auth_token else None
            self._loop_thread.start()
            self.server, self.health, self.port = self._on_loop(self._build())
        except BaseException:  # a port in use, a bad certificate: nothing of this start stays behind
            self._pool.shutdown(wait=False)
            self._stop_loop()
            self.watcher.close()
            client.close()
            raise

    async def _build(self) -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
        """The asyncio server, its health servicer and its port (created on the loop they run on)."""
        config = self.config
        server = grpc.aio.server(
            migration_thread_pool=self._pool,  # Rank/Auction: plain functions, run on the pool
            interceptors=[self.auth] if self.auth is not None else None,
            options=[
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ],
        )
        server.add_generic_rpc_handlers((service_handler(self.service),))
        servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        reflection.enable_server_reflection(
            (
                ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{config.host}:{config.port}"
        if config.tls is not None:
            port = server.add_secure_port(address, config.tls.credentials())
        else:
            port = server.add_insecure_port(address)
        return server, servicer, port

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result (from any other thread)."""
        if not self._loop.is_running():
            coroutine.close()
            raise RuntimeError("the server has stopped")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        if self._loop_thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
        self._loop.close()

    def _set_health(self, service: str, status: int) -> None:
        self._on_loop(self.health.set(service, status))

    def health_status(self, service: str = "") -> int:
        """What a health check of ``service`` answers now (a ``HealthCheckResponse`` status)."""
        request = health_pb2.HealthCheckRequest(service=service)
        return self._on_loop(self.health.Check(request, None)).status

    #: Health service name that turns NOT_SERVING while a newer model version cannot be loaded
    #: (the server keeps answering with the models it has; a monitor sees the stale deployment).
    MODELS_HEALTH = f"{SERVICE_NAME}/models"

    def _refresh_failed(self, field: str, version: str, reason: str) -> None:
        self._set_health(self.MODELS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _swapped(self, models: object) -> None:
        """A newer version loaded, or a source moved back to the served one: SERVING again once
        no model's source points at a version that did not load."""
        if not self.watcher.stale:
            self._set_health(self.MODELS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        served = self.reader.served
        if served is not None:
            self._join_items(served.items)

    def _join_items(self, items: ItemTable) -> None:
        """The served models' joins with a feature version's items (``ItemTable.rows_of_index``,
        ``index_of_rows``), computed when the version loads or a model swaps, so no request pays
        for them (tens of ms at 1M items)."""
        models = self.watcher.models
        items.rows_of_index(models.retrieval.items)
        for ranker in (models.ranker, models.ad_ranker):
            if ranker is not None:
                items.index_of_rows(ranker.items)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> RankingServer:
        self._warm_features()
        self._on_loop(self.server.start())
        for service in ("", SERVICE_NAME, self.MODELS_HEALTH):
            self._set_health(service, health_pb2.HealthCheckResponse.SERVING)
        self.check_features()
        if self.config.feature_check_s > 0:
            threading.Thread(target=self._watch_features, name="rankforge-features", daemon=True).start()
        self.watcher.start(self.config.refresh_interval_s)
        log.info(
            "serving %s on %s (retrieval %s, ranker %s)",
            SERVICE_NAME,
            self.address,
            self.watcher.models.retrieval.version,
            self.watcher.models.ranker.version,
        )
        return self

    def check_features(self) -> str | None:
        """Health follows the feature store: NOT_SERVING (the server's and the service's) while no
        version is current or the current one is gone, with the reason logged once; SERVING again
        when one is back. A store that does not answer leaves health as it is (requests answer
        UNAVAILABLE meanwhile: a transient fault should not pull every replica out at once).
        Returns the reason, or None."""
        try:
            reason = self.reader.missing(timeout_s=max(self.config.limits.redis_timeout_s, 1.0))
        except FeatureStoreUnavailable:
            return self._features_missing
        if reason != self._features_missing:
            status = health_pb2.HealthCheckResponse
            if reason is not None:
                log.error("health NOT_SERVING: %s", reason)
            else:
                log.info("health SERVING: the current feature version is back")
            for service in ("", SERVICE_NAME):
                self._set_health(service, status.NOT_SERVING if reason else status.SERVING)
            self._features_missing = reason
        return reason

    def _watch_features(self) -> None:
        while not self._stopping.wait(self.config.feature_check_s):
            try:
                self.check_features()
            except RuntimeError:  # the server stopped meanwhile
                return

    def _warm_features(self) -> None:
        """Load the current feature version's items before the port serves, so no request waits
        for the catalogue; a store that is down or empty now is the first request's to report."""
        try:
            version = self.reader.warm()
        except (FeatureStoreUnavailable, RankforgeError) as exc:
            log.warning("feature version not loaded at start (the first request retries): %s", exc)
            return
        if version is not None:
            log.info("feature version %s: %d items in memory", version.name, len(version.items))

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, stop accepting RPCs, let running ones finish within the grace."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        self._on_loop(self.health.enter_graceful_shutdown())
        self.watcher.stop()
        self._on_loop(self.server.stop(self.config.grace_s if grace_s is None else grace_s))
        self._pool.shutdown(wait=False, cancel_futures=True)  # a handler still running goes on alone
        self._stop_loop()
        self.watcher.close()  # the drained server needs its downloads no more
        self.reader.client.close()
        self._stopped.set()
        log.info("server on %s stopped", self.address)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the server gracefully (only callable from the main thread)."""

        def handle(signum: int, _frame: object) -> None:
            log.info(
                "signal %s: shutting down (grace %.1fs)", signal.Signals(signum).name, self.config.grace_s
            )
            threading.Thread(target=self.stop, name="rankforge-shutdown", daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def wait(self) -> None:
        """Block until :meth:`stop` has finished (a signal handler or another thread calls it)."""
        self._stopped.wait()

    def busy_workers(self) -> list[threading.Thread]:
        """RPC threads still running a handler (after :meth:`stop`: ones the grace did not end,
        e.g. blocked in a read that outlives it)."""
        return [t for t in threading.enumerate() if t.name.startswith("rankforge-rpc") and t.is_alive()]


def exit_when_stopped(server: RankingServer) -> None:
    """Wait until ``server`` has stopped (SIGTERM/SIGINT), then end the process at once, even if
    a handler thread outlived the drain grace: Python would otherwise wait for it at exit (a read
    blocked for its whole timeout kept a stopped server's process alive)."""
    server.wait()
    busy = server.busy_workers()
    if busy:
        log.warning("%d request(s) still running after the drain grace: exiting without them", len(busy))
    logging.shutdown()
    os._exit(0)


def serve_forever(config: ServerConfig) -> None:
    """One server process until SIGTERM/SIGINT (the body of every ``serve --processes`` worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = RankingServer(config)
    server.install_signal_handlers()
    server.start()
    exit_when_stopped(server)

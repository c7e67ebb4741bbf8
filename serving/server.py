"""The gRPC server: the ranking service plus standard health checking and reflection.

Lifecycle: models are loaded (from the registry or bundle directories) before the port reports
SERVING; a background thread refreshes them; on SIGTERM/SIGINT health turns NOT_SERVING (so load
balancers stop routing) and ``server.stop(grace)`` lets in-flight requests finish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field, replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
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

#: Worker threads beyond the Rank/Auction cap: health checks and reflection never wait behind ranking.
RESERVED_WORKERS = 2
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
    def __init__(self, config: ServerConfig) -> None:
        check_exposure(config.host, config.tls, config.allow_insecure)  # before loading anything
        self.config = config
        self.watcher = ModelWatcher(
            ModelSource(config.retrieval),
            ModelSource(config.ranker),
            ort_threads=config.ort_threads,
            ad_ranker=None if config.ad_ranker is None else ModelSource(config.ad_ranker),
            on_failure=self._refresh_failed,
            on_swap=self._swapped,
        )
        client = connect(
            config.redis_url, timeout_s=config.limits.redis_timeout_s, max_connections=config.workers * 2
        )
        self.reader = FeatureReader(client, KeyLayout(config.feature_prefix), on_load=self._join_items)
        limits = replace(config.limits, max_concurrent=config.limits.max_concurrent or config.workers)
        self.service = RankingService(
            lambda: self.watcher.models,
            self.reader,
            limits,
            auction_rule=config.auction_rule,
            exclude_seen=config.exclude_seen,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        # the token check (None: no token): counts the calls it rejects (`auth.rejected`)
        self.auth = BearerTokenInterceptor(config.auth_token) if config.auth_token else None
        self.server = grpc.server(
            # Rank/Auction hold at most 2 x `workers` threads (`workers` running, as many waiting
            # for a slot: ServiceLimits.max_concurrent); the reserved ones always answer health
            # checks and reflection, however busy the service is
            futures.ThreadPoolExecutor(
                max_workers=2 * config.workers + RESERVED_WORKERS, thread_name_prefix="rankforge-rpc"
            ),
            options=[("grpc.so_reuseport", 1 if config.reuse_port else 0)],
            interceptors=[self.auth] if self.auth is not None else None,
        )
        self.server.add_generic_rpc_handlers((service_handler(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{config.host}:{config.port}"
        if config.tls is not None:
            self.port = self.server.add_secure_port(address, config.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    #: Health service name that turns NOT_SERVING while a newer model version cannot be loaded
    #: (the server keeps answering with the models it has; a monitor sees the stale deployment).
    MODELS_HEALTH = f"{SERVICE_NAME}/models"

    def _refresh_failed(self, field: str, version: str, reason: str) -> None:
        self.health.set(self.MODELS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _swapped(self, models: object) -> None:
        """A newer version loaded, or a source moved back to the served one: SERVING again once
        no model's source points at a version that did not load."""
        if not self.watcher.stale:
            self.health.set(self.MODELS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
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
        self.server.start()
        for service in ("", SERVICE_NAME, self.MODELS_HEALTH):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.watcher.start(self.config.refresh_interval_s)
        log.info(
            "serving %s on %s (retrieval %s, ranker %s)",
            SERVICE_NAME,
            self.address,
            self.watcher.models.retrieval.version,
            self.watcher.models.ranker.version,
        )
        return self

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
        self.health.enter_graceful_shutdown()
        self.watcher.stop()
        done = self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        done.wait()
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
        self.server.wait_for_termination()
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

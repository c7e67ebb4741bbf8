"""A small typed client for the ``Rank`` and ``Auction`` RPCs: what the CLI, the benchmark and
callers use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rankforge.serving.proto import ranking_pb2, ranking_pb2_grpc
from rankforge.serving.security import channel_credentials


@dataclass(frozen=True)
class RankedItem:
    item_id: int
    score: float
    retrieval_score: float | None
    item_key: str = ""  # the log's string id, for a model trained on a log with string ids


@dataclass(frozen=True)
class RankResult:
    items: list[RankedItem]
    retrieval_version: str
    ranker_version: str
    feature_version: str
    request_id: str
    n_ranked: int

    @classmethod
    def from_proto(cls, response: ranking_pb2.RankResponse) -> RankResult:
        return cls(
            items=[
                RankedItem(
                    i.item_id,
                    i.score,
                    i.retrieval_score if i.HasField("retrieval_score") else None,
                    i.item_key,
                )
                for i in response.items
            ],
            retrieval_version=response.versions.retrieval,
            ranker_version=response.versions.ranker,
            feature_version=response.versions.features,
            request_id=response.request_id,
            n_ranked=response.n_ranked,
        )


@dataclass(frozen=True)
class AdOutcome:
    ad_id: int
    bid: float
    pctr: float
    ecpm: float
    price: float  # per click, at its position, under the server's rule


@dataclass(frozen=True)
class AuctionResult:
    ads: list[AdOutcome]  # by eCPM, best first: ads[0] wins
    rule: str
    ranker_version: str
    feature_version: str
    request_id: str

    @classmethod
    def from_proto(cls, response: ranking_pb2.AuctionResponse) -> AuctionResult:
        return cls(
            ads=[AdOutcome(a.ad_id, a.bid, a.pctr, a.ecpm, a.price) for a in response.ads],
            rule=response.rule,
            ranker_version=response.versions.ranker,
            feature_version=response.versions.features,
            request_id=response.request_id,
        )


def rank_request(
    user_id: int | str,
    k: int,
    candidates: Sequence[int] | Sequence[str] | None = None,
    context: Mapping[str, float] | None = None,
    request_id: str = "",
    exclude_seen: bool | None = None,
) -> ranking_pb2.RankRequest:
    """A Rank request; string ids (a log with ``data.log.ids = "string"``) go as keys.
    ``exclude_seen``: None leaves it to the server's deployment setting."""
    request = ranking_pb2.RankRequest(k=k, context=dict(context or {}), request_id=request_id)
    if exclude_seen is not None:
        request.exclude_seen = exclude_seen
    if isinstance(user_id, str):
        request.user_key = user_id
    else:
        request.user_id = int(user_id)
    if candidates is not None:
        if any(isinstance(c, str) for c in candidates):
            request.candidates.item_keys.extend(str(c) for c in candidates)
        else:
            request.candidates.item_ids.extend(int(c) for c in candidates)
        request.candidates.SetInParent()  # an empty list is still "set": the server rejects it
    return request


class RankingClient:
    """Owns one channel; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        address: str,
        timeout_s: float = 1.0,
        tls_ca: Path | None = None,
        token: str | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        server_name: str | None = None,
    ) -> None:
        """``tls_ca`` (or a client certificate) switches to TLS; ``token`` is sent as
        ``authorization: Bearer <token>`` on every call; ``server_name`` overrides the name the
        server certificate is checked against (e.g. ``localhost`` when dialling 127.0.0.1)."""
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        if tls_ca is not None or client_cert is not None:
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            credentials = channel_credentials(tls_ca, client_cert, client_key)
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address)
        self._stub = ranking_pb2_grpc.RankingServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def rank(
        self,
        user_id: int | str,
        k: int = 10,
        candidates: Sequence[int] | Sequence[str] | None = None,
        context: Mapping[str, float] | None = None,
        request_id: str = "",
        timeout_s: float | None = None,
        exclude_seen: bool | None = None,
    ) -> RankResult:
        """Raises ``grpc.RpcError`` with the server's status code and message on failure."""
        request = rank_request(user_id, k, candidates, context, request_id, exclude_seen)
        response = self._stub.Rank(
            request, timeout=timeout_s if timeout_s is not None else self.timeout_s, metadata=self._metadata
        )
        return RankResult.from_proto(response)

    def auction(
        self,
        user_id: int,
        bids: Mapping[int, float] | Sequence[tuple[int, float]],
        context: Mapping[str, float] | None = None,
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> AuctionResult:
        """Run one auction of ``bids`` (ad id -> cost-per-click bid) for ``user_id``."""
        pairs = bids.items() if isinstance(bids, Mapping) else bids
        request = ranking_pb2.AuctionRequest(
            user_id=user_id,
            context=dict(context or {}),
            ads=[ranking_pb2.AdBid(ad_id=int(a), bid=float(b)) for a, b in pairs],
            request_id=request_id,
        )
        response = self._stub.Auction(
            request, timeout=timeout_s if timeout_s is not None else self.timeout_s, metadata=self._metadata
        )
        return AuctionResult.from_proto(response)

    def health(self, service: str = "", timeout_s: float = 1.0) -> str:
        """``SERVING``, ``NOT_SERVING``, ... as the standard health service reports it."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

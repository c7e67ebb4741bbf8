"""Who may talk to the server, and over what: TLS (optionally mutual) and a bearer token.

* TLS: the server presents ``cert``/``key`` (PEM); with ``client_ca`` it also requires a client
  certificate signed by that CA (mTLS).
* Bearer token: every RPC except the standard health check must carry the metadata
  ``authorization: Bearer <token>`` (checked in constant time by an interceptor); reflection is
  behind it too, so an outsider cannot even list the API. Wrong or missing: UNAUTHENTICATED.
* Plaintext is for loopback only: a server bound to another interface without TLS refuses to
  start unless explicitly forced (``--insecure``), since anyone on the network could read user ids
  and rankings, or call it.

The token comes from a file or ``RANKFORGE_AUTH_TOKEN``, never from a command-line argument
(visible to every user in ``ps``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from rankforge.errors import ConfigError

TOKEN_ENV = "RANKFORGE_AUTH_TOKEN"
#: Reachable without a token: load balancers and orchestrators probe these.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class TlsConfig:
    cert: Path  # server certificate chain (PEM)
    key: Path  # its private key (PEM)
    client_ca: Path | None = None  # set: clients must present a certificate signed by this CA

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the TLS {what} {str(path)[:120]}: {exc.strerror}") from exc

        return grpc.ssl_server_credentials(
            [(read(self.key, "key"), read(self.cert, "certificate"))],
            root_certificates=read(self.client_ca, "client CA") if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: TlsConfig | None, allow_insecure: bool) -> None:
    """Plaintext beyond loopback only when forced."""
    if tls is None and not is_loopback(host) and not allow_insecure:
        raise ConfigError(
            f"refusing plaintext gRPC on {host} (reachable from the network): give --tls-cert and "
            "--tls-key, or --insecure to force it"
        )


def read_token(path: Path | None) -> str | None:
    """The bearer token from ``path``, else ``RANKFORGE_AUTH_TOKEN``, else None (no token check)."""
    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the auth token file {str(path)[:120]}: {exc.strerror}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if path is not None and not token:
        raise ConfigError(f"the auth token file {str(path)[:120]} is empty")
    return token or None


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only answers UNAUTHENTICATED."""

    def abort(request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(abort, request_deserializer=handler.request_deserializer)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects every call without ``authorization: Bearer <token>`` except the health checks."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty bearer token would let everyone in")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if not hmac.compare_digest(given, self._expected):
            return _deny(handler, "missing or wrong bearer token (metadata 'authorization: Bearer ...')")
        return handler


def channel_credentials(
    ca: Path | None, client_cert: Path | None = None, client_key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust ``ca`` (None: the system roots), present a client certificate for mTLS."""

    def read(path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca), read(client_key), read(client_cert))

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
import logging
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from rankforge.errors import ConfigError

log = logging.getLogger(__name__)
TOKEN_ENV = "RANKFORGE_AUTH_TOKEN"
#: Reachable without a token: load balancers and orchestrators probe these.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class TlsConfig:
    cert: Path  # server certificate chain (PEM)
    key: Path  # its private key (PEM)
    client_ca: Path | None = None  # set: clients must present a certificate signed by this CA

    def check(self) -> None:
        """The certificate and key load as a pair (a ``ConfigError`` saying which problem, not a
        bind failure); a certificate past its end date is logged as a warning at start."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"cannot read the TLS certificate or key: {exc.strerror}: {exc.filename}"
            ) from exc
        except ssl.SSLError as exc:
            problem = "the TLS key does not match the certificate" if "MISMATCH" in str(exc) else str(exc)
            raise ConfigError(f"{problem} ({str(self.cert)[:80]}, {str(self.key)[:80]})") from exc
        try:  # the stdlib's own PEM decoder: the end date without a crypto dependency
            decode = ssl._ssl._test_decode_cert  # type: ignore[attr-defined]  # private, not in the stubs
            not_after = decode(str(self.cert))["notAfter"]
        except (AttributeError, KeyError, ssl.SSLError, OSError):
            return
        if ssl.cert_time_to_seconds(not_after) < time.time():
            log.warning(
                "the TLS certificate %s expired on %s: clients will refuse it",
                str(self.cert)[:120],
                not_after,
            )

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the TLS {what} {str(path)[:120]}: {exc.strerror}") from exc

        self.check()
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
    """The bearer token from ``path``, else ``RANKFORGE_AUTH_TOKEN``, else None (no token check).

    A source that is given but blank, or a token no client can send in a header (whitespace
    inside, control or non-ASCII characters), is refused: a server must never start without the
    authentication its operator asked for."""
    if path is not None:
        try:
            raw = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not text"
            raise ConfigError(f"cannot read the auth token file {str(path)[:120]}: {why}") from exc
        source = f"the auth token file {str(path)[:120]}"
    elif TOKEN_ENV in os.environ:
        raw, source = os.environ[TOKEN_ENV], TOKEN_ENV
    else:
        return None
    token = raw.strip()
    if not token:
        raise ConfigError(f"{source} is empty or blank: give a token, or unset it to serve without one")
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ConfigError(
            f"{source} holds a token with whitespace, control or non-ASCII characters, which no "
            "client can send in an authorization header"
        )
    return token


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only answers UNAUTHENTICATED (a
    coroutine: the server's event loop answers it, no worker thread is taken)."""

    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(abort, request_deserializer=handler.request_deserializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call without ``authorization: Bearer <token>`` except the health checks (an
    interceptor of the asyncio server: it runs on the event loop, on the call's headers).

    The scheme is matched case-insensitively (RFC 7235), the token in constant time. Rejected
    calls are counted (``rejected``) and logged at most once per ``log_every_s`` with how many
    there were and the last one's method (never the token that was sent)."""

    def __init__(self, token: str, log_every_s: float = 10.0) -> None:
        if not token or not token.strip():
            raise ValueError("an empty bearer token would let everyone in")
        self._expected = token.encode()
        self.rejected = 0
        self._log_every_s = log_every_s
        self._unlogged = 0
        self._last_log = float("-inf")
        self._lock = threading.Lock()

    def _accepts(self, given: str | bytes) -> bool:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        scheme, _, credentials = text.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode("latin-1", "replace"), self._expected
        )

    def _rejected(self, method: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.rejected += 1
            self._unlogged += 1
            if now - self._last_log < self._log_every_s:
                return
            count, self._unlogged, self._last_log = self._unlogged, 0, now
        log.warning("rejected %d call(s) without a valid bearer token (latest: %s)", count, method[:120])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if not self._accepts(given):
            self._rejected(handler_call_details.method)
            return _deny(handler, "missing or wrong bearer token (metadata 'authorization: Bearer ...')")
        return handler


def channel_credentials(
    ca: Path | None, client_cert: Path | None = None, client_key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust ``ca`` (None: the system roots), present a client certificate for mTLS."""

    def read(path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca), read(client_key), read(client_cert))

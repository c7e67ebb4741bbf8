"""TLS, mutual TLS and the bearer token, with certificates generated here (#13 part 3)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rankforge.errors import ConfigError
from rankforge.serving.client import RankingClient
from rankforge.serving.security import TlsConfig, check_exposure, read_token

pytestmark = pytest.mark.redis
TOKEN = "s3cret-token"


def _cert(subject: str, issuer_key, issuer_name, key, ca: bool, hosts: list[str] = ()):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names = [
            x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("rankforge test CA", ca_key, None, ca_key, ca=True)
    out = {"ca": root / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, hosts in (("server", ["localhost", "127.0.0.1"]), ("client", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"rankforge {name}", ca_key, ca.subject, key, ca=False, hosts=hosts)
        out[f"{name}_cert"] = root / f"{name}.pem"
        out[f"{name}_key"] = root / f"{name}.key"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


def test_tls_server_answers_tls_clients_only(make_server, feature_version, pki, user_id) -> None:
    server = make_server(tls=TlsConfig(pki["server_cert"], pki["server_key"]))
    with RankingClient(server.address, tls_ca=pki["ca"], server_name="localhost") as client:
        assert len(client.rank(user_id, k=3).items) == 3
    with RankingClient(server.address, timeout_s=1.0) as plain, pytest.raises(grpc.RpcError) as err:
        plain.rank(user_id, k=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(make_server, feature_version, pki, user_id) -> None:
    server = make_server(tls=TlsConfig(pki["server_cert"], pki["server_key"], client_ca=pki["ca"]))
    with RankingClient(
        server.address,
        tls_ca=pki["ca"],
        client_cert=pki["client_cert"],
        client_key=pki["client_key"],
        server_name="localhost",
    ) as client:
        assert len(client.rank(user_id, k=2).items) == 2
    with (
        RankingClient(server.address, tls_ca=pki["ca"], server_name="localhost") as anonymous,
        pytest.raises(grpc.RpcError) as err,
    ):
        anonymous.rank(user_id, k=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_guards_everything_but_health(make_server, feature_version, user_id) -> None:
    server = make_server(auth_token=TOKEN)
    with RankingClient(server.address, token=TOKEN) as client:
        assert len(client.rank(user_id, k=2).items) == 2
    for token in (None, "wrong"):
        with RankingClient(server.address, token=token) as client, pytest.raises(grpc.RpcError) as err:
            client.rank(user_id, k=2)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in err.value.details()
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2.0
        )
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # no listing the API anonymously


def test_plaintext_beyond_loopback_needs_to_be_forced(pki, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"refusing plaintext gRPC on 0\.0\.0\.0"):
        check_exposure("0.0.0.0", None, allow_insecure=False)
    check_exposure("0.0.0.0", None, allow_insecure=True)
    check_exposure("0.0.0.0", TlsConfig(pki["server_cert"], pki["server_key"]), allow_insecure=False)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, None, allow_insecure=False)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert read_token(token_file) == TOKEN
    monkeypatch.setenv("RANKFORGE_AUTH_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(tmp_path / "empty")


def test_the_cli_speaks_tls_and_tokens(make_server, feature_version, pki, user_id, tmp_path, capsys) -> None:
    from rankforge.cli import main

    token = tmp_path / "token"
    token.write_text(TOKEN)
    server = make_server(tls=TlsConfig(pki["server_cert"], pki["server_key"]), auth_token=TOKEN)
    secure = ["--tls-ca", str(pki["ca"]), "--server-name", "localhost"]
    args = ["query", "--address", server.address, "--user", str(user_id), "--k", "2", *secure]
    assert main([*args, "--auth-token-file", str(token)]) == 0
    assert "request " in capsys.readouterr().out
    assert main(args) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err

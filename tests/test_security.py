"""TLS (self-signed certificates made here), mutual TLS, bearer tokens (health
open, reflection not) and the request size limit."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.health_probe import ProbeTarget, check_health
from server.settings import SettingsError, load_settings
from tests.conftest import server_settings
from tests.support import events, unique_name

Code = grpc.StatusCode


@dataclass
class Pem:
    certificate: Path
    key: Path

    @property
    def certificate_bytes(self) -> bytes:
        return self.certificate.read_bytes()

    @property
    def key_bytes(self) -> bytes:
        return self.key.read_bytes()


def make_certificate(
    directory: Path,
    name: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    is_ca: bool = False,
    client: bool = False,
) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``name`` (localhost and 127.0.0.1 as alternative names),
    self-signed unless ``issuer`` is given; written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    pem = Pem(directory / f"{name}.crt", directory / f"{name}.key")
    pem.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, certificate, key


@dataclass
class Certificates:
    self_signed: Pem  # server certificate that is its own root
    ca: Pem
    server: Pem  # signed by ca
    client: Pem  # signed by ca
    stranger: Pem  # a client certificate the server does not trust


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certificates")
    self_signed, _, _ = make_certificate(directory, "self-signed")
    ca, ca_cert, ca_key = make_certificate(directory, "test-ca", is_ca=True)
    server, _, _ = make_certificate(directory, "server", issuer=(ca_cert, ca_key))
    client, _, _ = make_certificate(directory, "client", issuer=(ca_cert, ca_key), client=True)
    stranger, _, _ = make_certificate(directory, "stranger", client=True)
    return Certificates(self_signed, ca, server, client, stranger)


async def start(**overrides: object) -> EventStreamingServer:
    app = EventStreamingServer(server_settings("memory", **overrides))
    await app.start()
    return app


@pytest_asyncio.fixture
async def running(request: pytest.FixtureRequest) -> AsyncIterator[list[EventStreamingServer]]:
    """Servers a test starts, stopped at its end."""
    apps: list[EventStreamingServer] = []
    try:
        yield apps
    finally:
        for app in apps:
            await app.stop(grace=0)


def tls_channel(
    port: int, roots: bytes, client: Pem | None = None, target: str = "localhost"
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=client.key_bytes if client else None,
        certificate_chain=client.certificate_bytes if client else None,
    )
    return grpc.aio.secure_channel(f"{target}:{port}", credentials)


async def append_through(channel: grpc.aio.Channel) -> pb.AppendToStreamResponse:
    stub = pb_grpc.EventStreamingStub(channel)
    return await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=unique_name(), events=events(1)), timeout=10
    )


# -- TLS -------------------------------------------------------------------------------
async def test_tls_server_serves_clients_that_trust_its_certificate(
    certificates: Certificates, running: list[EventStreamingServer]
) -> None:
    pem = certificates.self_signed
    app = await start(tls_cert_file=pem.certificate, tls_key_file=pem.key)
    running.append(app)
    async with tls_channel(app.port, pem.certificate_bytes) as channel:
        assert (await append_through(channel)).last_offset == 0
    async with tls_channel(app.port, pem.certificate_bytes, target="127.0.0.1") as channel:
        assert (await append_through(channel)).last_offset == 0


async def test_tls_server_refuses_plaintext_and_untrusting_clients(
    certificates: Certificates, running: list[EventStreamingServer]
) -> None:
    pem = certificates.self_signed
    app = await start(tls_cert_file=pem.certificate, tls_key_file=pem.key)
    running.append(app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await append_through(channel)
    assert plaintext.value.code() is Code.UNAVAILABLE
    async with tls_channel(app.port, certificates.ca.certificate_bytes) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await append_through(channel)
    assert untrusted.value.code() is Code.UNAVAILABLE


async def test_health_probe_speaks_tls_to_a_tls_server(
    certificates: Certificates, running: list[EventStreamingServer]
) -> None:
    pem = certificates.self_signed
    app = await start(tls_cert_file=pem.certificate, tls_key_file=pem.key)
    running.append(app)
    target = ProbeTarget.from_settings(app.settings, address=f"127.0.0.1:{app.port}")
    assert await check_health(target) == "SERVING"
    plaintext = ProbeTarget(f"127.0.0.1:{app.port}")
    assert (await check_health(plaintext, timeout=2)).startswith("UNREACHABLE")


# -- mutual TLS ----------------------------------------------------------------------------
async def test_mutual_tls_accepts_only_clients_with_a_certificate_from_the_client_ca(
    certificates: Certificates, running: list[EventStreamingServer]
) -> None:
    app = await start(
        tls_cert_file=certificates.server.certificate,
        tls_key_file=certificates.server.key,
        tls_client_ca_file=certificates.ca.certificate,
    )
    running.append(app)
    roots = certificates.ca.certificate_bytes
    async with tls_channel(app.port, roots, client=certificates.client) as channel:
        assert (await append_through(channel)).last_offset == 0
    for client in (None, certificates.stranger):
        async with tls_channel(app.port, roots, client=client) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await append_through(channel)
        assert refused.value.code() is Code.UNAVAILABLE, client


# -- bearer tokens ---------------------------------------------------------------------------
@pytest_asyncio.fixture(scope="module")
async def guarded() -> AsyncIterator[EventStreamingServer]:
    app = await start(auth_tokens="first-token, second-token")
    try:
        yield app
    finally:
        await app.stop(grace=0)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing bearer token"),
        (bearer("third-token"), "invalid bearer token"),
        ((("authorization", "Basic Zmlyc3QtdG9rZW4="),), "must be 'Bearer <token>'"),
    ],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    guarded: EventStreamingServer, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.AppendToStream(
                pb.AppendToStreamRequest(stream_name=unique_name(), events=events(1)),
                metadata=metadata,
            )
        assert refused.value.code() is Code.UNAUTHENTICATED
        assert message in (refused.value.details() or "")
        keys = [key for key, _ in refused.value.trailing_metadata() or ()]
        assert "x-request-id" in keys
        # Nothing was written.
        listed = await stub.ListStreams(pb.ListStreamsRequest(), metadata=bearer("first-token"))
        assert all(s.length for s in listed.streams)


async def test_request_bytes_that_do_not_decode_need_a_token_first(
    guarded: EventStreamingServer,
) -> None:
    """Without a token, even bytes that are no request at all are UNAUTHENTICATED:
    the token is checked before the request is decoded, so nothing about the
    message reaches an unauthenticated caller."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.unary_unary(
            "/eventstreaming.v1.EventStreaming/AppendToStream",
            request_serializer=None,
            response_deserializer=None,
        )
        garbage = b"\x0a\xff\xff\xff\xff\x0f"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(garbage)
        assert refused.value.code() is Code.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await call(garbage, metadata=bearer("first-token"))
        assert invalid.value.code() is Code.INVALID_ARGUMENT
        assert (invalid.value.details() or "").startswith("request")


async def test_every_configured_token_is_accepted(guarded: EventStreamingServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        name = unique_name()
        for token in ("first-token", "second-token"):
            await stub.AppendToStream(
                pb.AppendToStreamRequest(stream_name=name, events=events(1)),
                metadata=bearer(token),
            )
        length = await stub.GetStreamLength(
            pb.GetStreamLengthRequest(stream_name=name), metadata=bearer("second-token")
        )
        assert length.length == 2


async def test_subscriptions_need_a_token_too(guarded: EventStreamingServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_name=unique_name()))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() is Code.UNAUTHENTICATED


async def test_health_is_open_and_reflection_is_not(guarded: EventStreamingServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")

        async def list_services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
            call = reflection.ServerReflectionInfo(iter([request]), metadata=metadata)
            answer = await call.read()
            assert isinstance(answer, reflection_pb2.ServerReflectionResponse)
            return [s.name for s in answer.list_services_response.service]

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_services(())
        assert refused.value.code() is Code.UNAUTHENTICATED
        assert "eventstreaming.v1.EventStreaming" in await list_services(bearer("first-token"))


async def test_tokens_work_over_tls_as_call_credentials(
    certificates: Certificates, running: list[EventStreamingServer]
) -> None:
    pem = certificates.self_signed
    app = await start(tls_cert_file=pem.certificate, tls_key_file=pem.key, auth_tokens="s3cret")
    running.append(app)
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=pem.certificate_bytes),
        grpc.access_token_call_credentials("s3cret"),
    )
    async with grpc.aio.secure_channel(f"localhost:{app.port}", credentials) as channel:
        assert (await append_through(channel)).last_offset == 0


# -- request size -------------------------------------------------------------------------------
async def test_requests_beyond_the_size_limit_are_refused_cleanly(
    running: list[EventStreamingServer],
) -> None:
    app = await start(max_message_bytes=64 * 1024)
    running.append(app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        name = unique_name()
        big = pb.EventData(
            event_type="Big", content_type="application/octet-stream", data=b"x" * 100_000
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=[big]))
        assert refused.value.code() is Code.RESOURCE_EXHAUSTED
        # The server goes on serving, and nothing of the big request was stored.
        small = pb.EventData(event_type="Small", content_type="text/plain", data=b"x" * 1000)
        await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=[small]))
        length = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=name))
        assert length.length == 1


# -- settings ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"EVENTSTREAMING_TLS_CERT_FILE": "{cert}"}, "TLS_KEY_FILE"),
        ({"EVENTSTREAMING_TLS_CLIENT_CA_FILE": "{cert}"}, "TLS_CLIENT_CA_FILE"),
        (
            {
                "EVENTSTREAMING_TLS_CERT_FILE": "/no/such.crt",
                "EVENTSTREAMING_TLS_KEY_FILE": "{key}",
            },
            "EVENTSTREAMING_TLS_CERT_FILE",
        ),
    ],
)
def test_incomplete_tls_settings_are_refused(
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    named: str,
) -> None:
    pem = certificates.self_signed
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value.format(cert=pem.certificate, key=pem.key))
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_auth_tokens_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTREAMING_AUTH_TOKENS", "ok-token")
    assert load_settings().auth_token_list == ["ok-token"]
    monkeypatch.setenv("EVENTSTREAMING_AUTH_TOKENS", " , ")
    assert load_settings().auth_token_list == []

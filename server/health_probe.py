"""A gRPC health check client for ``eventstreaming health`` (the Docker
HEALTHCHECK): asks the standard ``grpc.health.v1.Health`` service of a running
server, over TLS when the server uses it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.settings import Settings


@dataclass(frozen=True)
class ProbeTarget:
    address: str
    #: PEM roots to trust; None: plaintext.
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    #: The name the server's certificate must carry (when it is not the host).
    server_name: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        address: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        server_name: str | None = None,
    ) -> ProbeTarget:
        """The server of these settings (on loopback when it listens on every
        address). With TLS on, its own certificate
        is trusted unless ``ca_file`` is given (right for a self-signed one)."""
        if address is None:
            # A wildcard listen address is reached on loopback.
            host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::", "[::]") else settings.host
            address = f"{host}:{settings.port}"
        if not settings.tls_enabled and ca_file is None:
            return cls(address)
        roots_file = ca_file or settings.tls_cert_file
        return cls(
            address,
            root_certificates=roots_file.read_bytes() if roots_file else None,
            client_certificate=cert_file.read_bytes() if cert_file else None,
            client_key=key_file.read_bytes() if key_file else None,
            server_name=server_name or "localhost",
        )

    def channel(self) -> grpc.aio.Channel:
        if self.root_certificates is None:
            return grpc.aio.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )
        options = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, credentials, options=options)


async def check_health(target: ProbeTarget, service: str = "", timeout: float = 3.0) -> str:
    """The serving status name (``SERVING``, ``NOT_SERVING``, ...), or ``UNREACHABLE:
    <why>`` when the server does not answer within ``timeout`` seconds."""
    async with target.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await asyncio.wait_for(
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout),
                timeout + 1,
            )
        except grpc.aio.AioRpcError as exc:
            return f"UNREACHABLE: {exc.code().name} {exc.details()}"
        except TimeoutError:
            return "UNREACHABLE: no answer"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

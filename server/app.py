"""The server process: storage, the grpc.aio server with health and reflection, and
a clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.interceptors import build_interceptors
from server.metrics import Metrics, MetricsService
from server.retention import RetentionTask
from server.security import server_credentials
from server.servicer import EventStreamingServicer
from server.settings import Settings
from server.subscriptions import Subscriptions
from storage.factory import create_store
from storage.interface import EventStore

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStreaming"].full_name


def build_store(settings: Settings) -> EventStore:
    return create_store(
        settings.storage,
        dsn=settings.database_url.get_secret_value(),
        pool_min_size=settings.pool_min_size,
        pool_max_size=settings.pool_max_size,
        auto_migrate=settings.auto_migrate,
    )


@dataclass
class EventStreamingServer:
    """One running service: start() binds and serves, stop() shuts down cleanly."""

    settings: Settings
    store: EventStore | None = None
    port: int = 0
    #: The port of the /metrics endpoint (0: metrics are off).
    metrics_port: int = 0
    #: The subscriptions in progress (made at start).
    subscriptions: Subscriptions | None = None
    _server: grpc.aio.Server | None = None
    _retention: RetentionTask | None = None
    _metrics: MetricsService | None = None
    _health: Any = field(default_factory=lambda: health.aio.HealthServicer())  # type: ignore[attr-defined]

    async def start(self) -> None:
        store = self.store = self.store or build_store(self.settings)
        metrics = Metrics(queue_streams=self.settings.metrics_queue_streams)
        server = self._server = grpc.aio.server(
            interceptors=build_interceptors(
                self.settings, metrics if self.settings.metrics_port else None
            ),
            # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
            options=[("grpc.max_receive_message_length", self.settings.max_message_bytes)],
        )
        subscriptions = self.subscriptions = Subscriptions(store)
        pb_grpc.add_EventStreamingServicer_to_server(
            EventStreamingServicer(store, subscriptions), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        # Storage first (pool, migrations), then accept calls: health says SERVING
        # only once both are ready.
        await store.start()
        self._retention = RetentionTask(store, self.settings.retention_interval_seconds)
        self._retention.start()
        if self.settings.metrics_port:
            self._metrics = MetricsService(metrics, store, self.settings.metrics_refresh_seconds)
            self._metrics.start(self.settings.host, self.settings.metrics_port)
            self.metrics_port = self._metrics.port
        await server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving EventStreaming on %s:%d with %s storage",
            self.settings.host,
            self.port,
            self.settings.storage,
            extra={"port": self.port, "storage": self.settings.storage},
        )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._retention is not None:
            await self._retention.stop()
        if self.subscriptions is not None:
            # Subscriptions never finish on their own: end them (UNAVAILABLE, so
            # clients resubscribe elsewhere) rather than wait out the grace period.
            self.subscriptions.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self._metrics is not None:
            await self._metrics.stop()
        if self.store is not None:
            await self.store.close()
        log.info("server stopped")

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down within the grace period."""
    app = EventStreamingServer(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        await app.start()
        await stop_requested.wait()
        log.info("shutdown requested; finishing calls in progress")
    finally:
        await app.stop()

"""The server process: storage, the grpc.aio server with health and reflection, and
a clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from server.calls import CallPath
from server.consume import Consumers
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.listen import address_of, check_can_listen
from server.metrics import Metrics, MetricsService
from server.retention import RetentionTask
from server.security import BearerTokens, server_credentials
from server.servicer import EventStreamingServicer
from server.sessions import AppendSessions
from server.settings import Settings, StartupError
from server.stores import build_store
from server.subscriptions import Subscriptions
from storage.interface import EventStore

if TYPE_CHECKING:
    from server.workers import WorkerLink

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStreaming"].full_name


@dataclass
class EventStreamingServer:
    """One running service: start() binds and serves, stop() shuts down cleanly."""

    settings: Settings
    store: EventStore | None = None
    port: int = 0
    #: The port of the /metrics endpoint (0: metrics are off).
    metrics_port: int = 0
    #: Share the port with the other worker processes (SO_REUSEPORT). Off for a
    #: server on its own: then a port in use stops the start rather than being
    #: shared with whoever holds it.
    reuse_port: bool = False
    #: The subscriptions in progress (made at start).
    subscriptions: Subscriptions | None = None
    #: The append sessions in progress (made at start).
    sessions: AppendSessions | None = None
    #: The Consume streams in progress (made at start).
    consumers: Consumers | None = None
    _server: grpc.aio.Server | None = None
    _retention: RetentionTask | None = None
    _metrics: MetricsService | None = None
    _health: Any = field(default_factory=lambda: health.aio.HealthServicer())  # type: ignore[attr-defined]
    #: Set once calls are accepted; a start that failed stops without a word.
    _served: bool = False

    async def start(self) -> None:
        """Bind, start storage, serve. A port or host that cannot be used raises
        StartupError; storage that cannot be started raises a storage error."""
        host = self.settings.host
        if not self.reuse_port:  # the workers' supervisor checked it, and they share it
            check_can_listen(host, self.settings.port, "port")
        if self.settings.metrics_port:
            check_can_listen(host, self.settings.metrics_port, "metrics_port")
        store = self.store = self.store or build_store(self.settings)
        metrics = Metrics(queue_streams=self.settings.metrics_queue_streams)
        server = self._server = grpc.aio.server(
            options=[
                # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                # gRPC's default SO_REUSEPORT lets a second server bind a port in use
                # and take part of its calls: a taken port must stop the start.
                # Worker processes share their port on purpose.
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
        )
        subscriptions = self.subscriptions = Subscriptions(store)
        metered = metrics if self.settings.metrics_port else None
        sessions = self.sessions = AppendSessions(
            store, self.settings.append_session_max_in_flight, metered
        )
        consumers = self.consumers = Consumers(store, metered)
        tokens = self.settings.auth_token_list
        calls = CallPath(
            metered,
            BearerTokens(tokens) if tokens else None,
        )
        calls.register(
            pb_grpc.add_EventStreamingServicer_to_server,
            EventStreamingServicer(store, subscriptions, sessions, consumers),
            server,
        )
        calls.register(health_pb2_grpc.add_HealthServicer_to_server, self._health, server)
        calls.register(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            # The asyncio servicer (enable_server_reflection picks it only when
            # handed the server itself).
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            server,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = address_of(host, self.settings.port)
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:  # taken since the check, or refused for another reason
            raise StartupError("port", f"cannot listen on {address}")
        # Storage first (pool, migrations), then accept calls: health says SERVING
        # only once both are ready.
        await store.start()
        self._retention = RetentionTask(store, self.settings.retention_interval_seconds)
        self._retention.start()
        if self.settings.metrics_port:
            self._metrics = MetricsService(metrics, store, self.settings.metrics_refresh_seconds)
            try:
                self._metrics.start(host, self.settings.metrics_port)
            except RuntimeError as exc:  # taken since the check
                self._metrics = None
                raise StartupError("metrics_port", str(exc)) from None
            self.metrics_port = self._metrics.port
        await server.start()
        self._served = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving EventStreaming on %s:%d with %s storage",
            self.settings.host,
            self.port,
            self.settings.storage,
            extra={"port": self.port, "storage": self.settings.storage, "pid": os.getpid()},
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
        if self.sessions is not None:
            # Sessions stop reading, answer what they read, and end (UNAVAILABLE).
            self.sessions.close()
        if self.consumers is not None:
            # Nor do Consume streams; their messages are left to their leases.
            self.consumers.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self._metrics is not None:
            await self._metrics.stop()
        if self.store is not None:
            await self.store.close()
        if self._served:
            log.info("server stopped")

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve(settings: Settings, link: WorkerLink | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down within the grace period. As a
    worker process (``link``: to its supervisor), share the port with the other
    workers, say when serving, and stop too when the supervisor is gone."""
    app = EventStreamingServer(settings, reuse_port=link is not None)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        if link is not None:
            await link.open(supervisor_gone=stop_requested.set)
        await app.start()
        if link is not None:
            await link.ready()
        await stop_requested.wait()
        log.info("shutdown requested; finishing calls in progress")
    finally:
        await app.stop()
        if link is not None:
            await link.close()

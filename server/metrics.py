"""Prometheus metrics: what every call did (counted by the call interceptor from
requests and responses), plus queue gauges and the database pool sampled
periodically from storage.

Cardinality stays bounded: RPC labels are the service's own method names and
status codes; per-queue gauges carry a ``stream`` label for at most
``metrics_queue_streams`` queues (the deepest), the others are summed under
``stream="_other"`` (no stream name can start with ``_``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from storage.errors import StorageError, StreamNotFound
from storage.interface import EventStore
from storage.records import IN_FLIGHT_AGE_BOUNDS, QueueTableStats, StreamType

log = logging.getLogger(__name__)

OTHER_STREAMS = "_other"
#: Queues whose depth is sampled at each refresh (recently used ones first).
MAX_TRACKED_QUEUES = 256
#: Streams listed per refresh when looking for queues no call has touched yet.
MAX_LISTED_STREAMS = 1000

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_QUEUE_METHODS = frozenset(
    {
        "Enqueue",
        "Dequeue",
        "Acknowledge",
        "Nack",
        "ExtendVisibility",
        "ListDeadLetters",
        "RedriveDeadLetters",
    }
)


@dataclass(frozen=True, slots=True)
class QueueSample:
    stream_name: str
    pending: int
    in_flight: int
    dead_letters: int
    #: Seconds since the oldest message still in the queue was enqueued (0: none).
    oldest_age: float = 0.0


class Metrics:
    """The service's metrics, on a registry of their own (several servers may
    share a process, in tests)."""

    def __init__(self, *, queue_streams: int = 20) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_streams = queue_streams
        registry = self.registry
        self.rpc_requests = Counter(
            "eventstreaming_rpc_requests",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "eventstreaming_rpc_duration_seconds",
            "Time from call to status, by method and status code "
            "(for SubscribeToStream: how long the subscription lasted).",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events_appended = Counter(
            "eventstreaming_events_appended",
            "Events appended to persistent streams.",
            registry=registry,
        )
        self.messages_enqueued = Counter(
            "eventstreaming_messages_enqueued", "Messages enqueued.", registry=registry
        )
        self.messages_dequeued = Counter(
            "eventstreaming_messages_dequeued",
            "Message deliveries (a redelivery counts again).",
            registry=registry,
        )
        self.messages_acked = Counter(
            "eventstreaming_messages_acknowledged", "Messages acknowledged.", registry=registry
        )
        self.messages_nacked = Counter(
            "eventstreaming_messages_nacked", "Messages given back with Nack.", registry=registry
        )
        self.messages_dead_lettered = Counter(
            "eventstreaming_messages_dead_lettered",
            "Messages moved to a dead-letter queue, as seen by the periodic queue "
            "sampling (growth of the dead-letter queues between two samples).",
            registry=registry,
        )
        self.messages_redriven = Counter(
            "eventstreaming_messages_redriven",
            "Dead letters put back in their queue.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "eventstreaming_queue_depth",
            "Messages waiting in a queue (visible or delayed), per stream.",
            ["stream"],
            registry=registry,
        )
        self.queue_in_flight = Gauge(
            "eventstreaming_queue_in_flight",
            "Messages leased to a consumer, per stream.",
            ["stream"],
            registry=registry,
        )
        self.queue_dead_letters = Gauge(
            "eventstreaming_queue_dead_letters",
            "Messages in a queue's dead-letter queue, per stream.",
            ["stream"],
            registry=registry,
        )
        self.queue_oldest_age = Gauge(
            "eventstreaming_queue_oldest_message_age_seconds",
            "Seconds since the oldest message still in a queue (waiting, delayed or held) "
            "was enqueued, per stream; 0 when the queue is empty. For _other, the largest.",
            ["stream"],
            registry=registry,
        )
        self.queue_table_dead_tuples = Gauge(
            "eventstreaming_queue_table_dead_tuples",
            "Rows of the queue table deleted or replaced and not yet vacuumed, as the "
            "database counts them (PostgreSQL only).",
            registry=registry,
        )
        self.queue_table_live_tuples = Gauge(
            "eventstreaming_queue_table_live_tuples",
            "Live rows of the queue table, as the database counts them (PostgreSQL only).",
            registry=registry,
        )
        self.queue_table_bytes = Gauge(
            "eventstreaming_queue_table_bytes",
            "Size of the queue table (part=table) and of its indexes (part=indexes) "
            "(PostgreSQL only).",
            ["part"],
            registry=registry,
        )
        self.queue_in_flight_by_age = Gauge(
            "eventstreaming_queue_in_flight_by_age",
            "Messages of every queue leased to a consumer whose lease has not run out, "
            "counted by their age since enqueue: those at most le seconds old "
            "(cumulative, as histogram buckets) (PostgreSQL only).",
            ["le"],
            registry=registry,
        )
        self.subscriptions_open = Gauge(
            "eventstreaming_subscriptions_open",
            "Subscriptions in progress (SubscribeToStream and SubscribeToAll calls).",
            registry=registry,
        )
        self.db_pool_in_use = Gauge(
            "eventstreaming_db_pool_connections_in_use",
            "Database connections checked out of the pool (0 for memory storage).",
            registry=registry,
        )
        self.db_pool_size = Gauge(
            "eventstreaming_db_pool_connections",
            "Database connections open in the pool (0 for memory storage).",
            registry=registry,
        )
        self._recent_queues: OrderedDict[str, None] = OrderedDict()
        #: Each (method, code)'s two series, looked up once.
        self._calls: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._labelled: set[str] = set()
        self._dead_letters_seen: dict[str, int] = {}

    # -- per call, from the call path (server.calls) ---------------------------------
    def observe_call(self, method: str, code: str, seconds: float) -> None:
        series = self._calls.get((method, code))
        if series is None:
            series = self._calls[(method, code)] = (
                self.rpc_requests.labels(method, code),
                self.rpc_duration.labels(method, code),
            )
        series[0].inc()
        series[1].observe(seconds)

    def observe_success(self, method: str, request: Any, response: Any) -> None:
        """Count what a successful unary call did, from its request and response."""
        if method == "AppendToStream":
            self.events_appended.inc(response.last_offset - response.first_offset + 1)
        elif method == "AppendToStreams":
            self.observe_appends(response)
        elif method == "Enqueue":
            self.messages_enqueued.inc(len(response.event_ids))
        elif method == "Dequeue":
            self.messages_dequeued.inc(len(response.messages))
        elif method == "Acknowledge":
            self.messages_acked.inc(len(response.acknowledged))
        elif method == "Nack":
            self.messages_nacked.inc()
        elif method == "RedriveDeadLetters":
            self.messages_redriven.inc(response.redriven_count)
        elif method == "DeleteStream":
            self._recent_queues.pop(request.stream_name, None)
        if method in _QUEUE_METHODS:
            self.note_queue(request.stream_name)

    def observe_appends(self, response: Any) -> None:
        """Count the events of an AppendToStreamsResponse (a call's, or an
        AppendSession request's)."""
        count = sum(r.last_offset - r.first_offset + 1 for r in response.results)
        if count:
            self.events_appended.inc(count)

    def note_queue(self, stream_name: str) -> None:
        """Remember a queue a call used, so its depth is sampled."""
        self._recent_queues[stream_name] = None
        self._recent_queues.move_to_end(stream_name)
        while len(self._recent_queues) > MAX_TRACKED_QUEUES:
            self._recent_queues.popitem(last=False)

    # -- sampled from storage ---------------------------------------------------------
    async def refresh(self, store: EventStore) -> None:
        """Sample the database pool, the queue table and the tracked queues' depths."""
        self._sample_pool(store)
        table = await store.queue_table_stats()
        if table is not None:
            self.publish_queue_table(table)
        candidates = list(reversed(self._recent_queues))
        if len(candidates) < MAX_TRACKED_QUEUES:
            candidates += [
                name for name in await self._listed_queues(store) if name not in self._recent_queues
            ][: MAX_TRACKED_QUEUES - len(candidates)]
        samples: list[QueueSample] = []
        now = datetime.now(UTC)
        for name in candidates:
            try:
                meta = await store.get_stream_metadata(name)
            except StreamNotFound:
                self._recent_queues.pop(name, None)
                continue
            if meta.stream_type != StreamType.EPHEMERAL:
                self._recent_queues.pop(name, None)
                continue
            oldest = meta.oldest_message_enqueued_at
            samples.append(
                QueueSample(
                    name,
                    meta.pending_count,
                    meta.in_flight_count,
                    meta.dead_letter_count,
                    0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()),
                )
            )
        self.publish_queues(samples)

    async def _listed_queues(self, store: EventStore) -> list[str]:
        names: list[str] = []
        token, listed = "", 0
        while listed < MAX_LISTED_STREAMS:
            page = await store.list_streams("", min(1000, MAX_LISTED_STREAMS - listed), token)
            listed += len(page.streams)
            names += [s.stream_name for s in page.streams if s.stream_type == StreamType.EPHEMERAL]
            token = page.next_page_token
            if not token or not page.streams:
                break
        return names

    def publish_queues(self, samples: Iterable[QueueSample]) -> None:
        """Set the per-queue gauges: the deepest queues by name, the rest summed."""
        ordered = sorted(samples, key=lambda s: (-(s.pending + s.in_flight), s.stream_name))
        for sample in ordered:
            before = self._dead_letters_seen.get(sample.stream_name)
            if before is not None and sample.dead_letters > before:
                self.messages_dead_lettered.inc(sample.dead_letters - before)
        self._dead_letters_seen = {s.stream_name: s.dead_letters for s in ordered}
        named, rest = ordered[: self.queue_streams], ordered[self.queue_streams :]
        values: dict[str, tuple[int, int, int, float]] = {
            s.stream_name: (s.pending, s.in_flight, s.dead_letters, s.oldest_age) for s in named
        }
        if rest:
            values[OTHER_STREAMS] = (
                sum(s.pending for s in rest),
                sum(s.in_flight for s in rest),
                sum(s.dead_letters for s in rest),
                max(s.oldest_age for s in rest),
            )
        gauges = (self.queue_depth, self.queue_in_flight, self.queue_dead_letters)
        for gone in self._labelled - values.keys():
            for gauge in (*gauges, self.queue_oldest_age):
                gauge.remove(gone)
        for label, (pending, in_flight, dead, age) in values.items():
            self.queue_depth.labels(label).set(pending)
            self.queue_in_flight.labels(label).set(in_flight)
            self.queue_dead_letters.labels(label).set(dead)
            self.queue_oldest_age.labels(label).set(age)
        self._labelled = set(values)

    def publish_queue_table(self, table: QueueTableStats) -> None:
        """The queue table's dead and live rows, sizes, and in-flight messages by age."""
        self.queue_table_dead_tuples.set(table.dead_tuples)
        self.queue_table_live_tuples.set(table.live_tuples)
        self.queue_table_bytes.labels("table").set(table.table_bytes)
        self.queue_table_bytes.labels("indexes").set(table.index_bytes)
        bounds = [f"{b:g}" for b in IN_FLIGHT_AGE_BOUNDS] + ["+Inf"]
        for bound, count in zip(bounds, table.in_flight_by_age, strict=True):
            self.queue_in_flight_by_age.labels(bound).set(count)

    def _sample_pool(self, store: EventStore) -> None:
        usage = store.pool_usage()
        if usage is None:
            return
        self.db_pool_size.set(usage.size)
        self.db_pool_in_use.set(usage.in_use)


class MetricsService:
    """The ``/metrics`` HTTP endpoint and the periodic storage sampling."""

    def __init__(self, metrics: Metrics, store: EventStore, refresh_seconds: float) -> None:
        self.metrics = metrics
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.port = 0
        self._http: tuple[WSGIServer, Thread] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self, host: str, port: int) -> None:
        try:
            self._http = start_http_server(port, host, registry=self.metrics.registry)
        except OSError as exc:
            raise RuntimeError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.port = int(self._http[0].server_port)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="metrics-refresh")
        log.info("metrics on http://%s:%d/metrics", host, self.port, extra={"port": self.port})

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.metrics.refresh(self.store)
            except StorageError as exc:
                log.warning("metrics sampling failed: %s", exc)
            except Exception:
                log.exception("metrics sampling failed")
            await asyncio.sleep(self.refresh_seconds)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        if self._http is not None:
            httpd, thread = self._http
            self._http = None
            # shutdown() waits for serve_forever to notice; keep the loop free.
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
            thread.join(timeout=5)

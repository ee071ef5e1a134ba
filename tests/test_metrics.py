"""Prometheus metrics: what calls did, queue gauges with bounded cardinality,
open subscriptions, the database pool; nothing at all when the port is 0."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import server_settings
from tests.support import events, free_port, unique_name, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MeteredServer:
    def __init__(self, app: EventStreamingServer) -> None:
        self.app = app
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.stub = pb_grpc.EventStreamingStub(self.channel)

    async def scrape(self) -> Samples:
        url = f"http://127.0.0.1:{self.app.metrics_port}/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(fetch)
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.scrape()).get((name, tuple(sorted(labels.items()))))

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop(grace=1)


async def start_metered(
    backend: str = "memory", dsn: str = "", **overrides: object
) -> MeteredServer:
    settings = server_settings(
        backend,
        dsn,
        metrics_port=free_port(),
        metrics_refresh_seconds=0.05,
        **overrides,
    )
    app = EventStreamingServer(settings)
    await app.start()
    return MeteredServer(app)


@pytest_asyncio.fixture(scope="module")
async def metered() -> AsyncIterator[MeteredServer]:
    server = await start_metered(metrics_queue_streams=1000)
    try:
        yield server
    finally:
        await server.close()


def queue_config(max_attempts: int = 5) -> pb.StreamConfiguration:
    return pb.StreamConfiguration(
        stream_type=pb.STREAM_TYPE_EPHEMERAL, max_delivery_attempts=max_attempts
    )


async def test_rpc_count_and_latency_by_method_and_code(metered: MeteredServer) -> None:
    stub = metered.stub
    before = await metered.scrape()
    name = unique_name()
    await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(3)))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=unique_name()))
    after = await metered.scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = {"method": "AppendToStream", "code": "OK"}
    not_found = {"method": "GetStreamLength", "code": "NOT_FOUND"}
    assert delta("eventstreaming_rpc_requests_total", **ok) == 1
    assert delta("eventstreaming_rpc_requests_total", **not_found) == 1
    assert delta("eventstreaming_rpc_duration_seconds_count", **ok) == 1
    assert delta("eventstreaming_rpc_duration_seconds_bucket", le="+Inf", **not_found) == 1
    assert delta("eventstreaming_rpc_duration_seconds_sum", **ok) > 0
    assert delta("eventstreaming_events_appended_total") == 3


async def test_queue_counters_follow_enqueue_dequeue_ack_and_nack(metered: MeteredServer) -> None:
    stub = metered.stub
    queue = unique_name()
    before = await metered.scrape()
    ids = (await stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(3)))).event_ids
    got = await stub.Dequeue(pb.DequeueRequest(stream_name=queue, consumer_id="c", max_messages=2))
    held = [m.event.event_id for m in got.messages]
    assert held == list(ids[:2])
    await stub.Acknowledge(
        pb.AcknowledgeRequest(stream_name=queue, consumer_id="c", event_ids=[held[0]])
    )
    await stub.Nack(pb.NackRequest(stream_name=queue, consumer_id="c", event_id=held[1]))
    after = await metered.scrape()

    def delta(name: str) -> float:
        return after.get((name, ()), 0.0) - before.get((name, ()), 0.0)

    assert delta("eventstreaming_messages_enqueued_total") == 3
    assert delta("eventstreaming_messages_dequeued_total") == 2
    assert delta("eventstreaming_messages_acknowledged_total") == 1
    assert delta("eventstreaming_messages_nacked_total") == 1


async def test_queue_depth_and_in_flight_gauges_per_stream() -> None:
    server = await start_metered(metrics_queue_streams=5)
    try:
        queue = unique_name("depth")
        await server.stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(5)))
        await server.stub.Dequeue(
            pb.DequeueRequest(stream_name=queue, consumer_id="c", max_messages=2)
        )

        async def sampled() -> bool:
            depth = await server.value("eventstreaming_queue_depth", stream=queue)
            in_flight = await server.value("eventstreaming_queue_in_flight", stream=queue)
            return depth == 3 and in_flight == 2

        await wait_until(sampled)
    finally:
        await server.close()


async def test_per_queue_gauges_name_the_deepest_queues_and_sum_the_rest() -> None:
    server = await start_metered(metrics_queue_streams=2)
    try:
        queues = {unique_name("q"): depth for depth in (1, 2, 3, 4)}
        for queue, depth in queues.items():
            await server.stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(depth)))
        deepest = sorted(queues, key=queues.__getitem__)[-2:]

        async def labelled() -> set[str] | None:
            samples = await server.scrape()
            streams = {
                dict(labels)["stream"]
                for (name, labels) in samples
                if name == "eventstreaming_queue_depth"
            }
            other = samples.get(("eventstreaming_queue_depth", (("stream", "_other"),)))
            return streams if other == 1 + 2 else None

        streams = await wait_until(labelled)
        assert streams == {*deepest, "_other"}
    finally:
        await server.close()


async def test_dead_lettered_messages_are_counted(metered: MeteredServer) -> None:
    stub = metered.stub
    queue = unique_name("dlq")
    await stub.ConfigureStream(
        pb.ConfigureStreamRequest(stream_name=queue, configuration=queue_config(max_attempts=1))
    )
    await stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(1)))
    # Wait for one sample of the queue before dead-lettering (growth is counted).
    await wait_until(lambda: _equals(metered.value("eventstreaming_queue_depth", stream=queue), 1))
    before = await metered.value("eventstreaming_messages_dead_lettered_total") or 0.0
    got = await stub.Dequeue(pb.DequeueRequest(stream_name=queue, consumer_id="c"))
    await stub.Nack(
        pb.NackRequest(stream_name=queue, consumer_id="c", event_id=got.messages[0].event.event_id)
    )

    async def counted() -> bool:
        total = await metered.value("eventstreaming_messages_dead_lettered_total") or 0.0
        gauge = await metered.value("eventstreaming_queue_dead_letters", stream=queue)
        return total >= before + 1 and gauge == 1

    await wait_until(counted)


async def test_open_subscriptions_gauge(metered: MeteredServer) -> None:
    stub = metered.stub
    name = unique_name()
    await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(1)))
    gauge = "eventstreaming_subscriptions_open"
    before = await metered.value(gauge) or 0.0
    call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_name=name))
    await call.read()
    await wait_until(lambda: _equals(metered.value(gauge), before + 1))
    call.cancel()
    await wait_until(lambda: _equals(metered.value(gauge), before))


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def test_metrics_are_off_when_the_port_is_zero() -> None:
    app = EventStreamingServer(server_settings("memory"))
    await app.start()
    try:
        assert app.settings.metrics_port == 0
        assert app.metrics_port == 0
    finally:
        await app.stop(grace=0)


async def test_database_pool_connections_in_use(pg_dsn: str) -> None:
    server = await start_metered("postgres", pg_dsn)
    name = unique_name()
    locker = await asyncpg.connect(pg_dsn)
    try:
        await server.stub.AppendToStream(
            pb.AppendToStreamRequest(stream_name=name, events=events(1))
        )
        await wait_until(lambda: server.value("eventstreaming_db_pool_connections"))
        # An append blocked on a row lock holds its pool connection.
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM event_streaming.streams WHERE stream_name = $1 FOR UPDATE", name
            )
            blocked = asyncio.ensure_future(
                server.stub.AppendToStream(
                    pb.AppendToStreamRequest(stream_name=name, events=events(1))
                )
            )
            await wait_until(
                lambda: _at_least(server.value("eventstreaming_db_pool_connections_in_use"), 1)
            )
        await blocked
        await wait_until(
            lambda: _equals(server.value("eventstreaming_db_pool_connections_in_use"), 0)
        )
    finally:
        await locker.close()
        await server.close()


async def _at_least(value: Awaitable[float | None], expected: float) -> bool:
    return (await value or 0) >= expected


async def test_events_appended_count_every_way_of_appending(metered: MeteredServer) -> None:
    stub = metered.stub
    counter = "eventstreaming_events_appended_total"
    before = await metered.value(counter) or 0.0
    a, b = unique_name(), unique_name()
    await stub.AppendToStreams(
        pb.AppendToStreamsRequest(
            appends=[
                pb.StreamAppend(stream_name=a, events=events(2)),
                pb.StreamAppend(stream_name=b, events=events(3)),
            ]
        )
    )
    call = stub.AppendSession()
    for i in range(4):
        await call.write(
            pb.AppendSessionRequest(
                request_id=i,
                request=pb.AppendToStreamsRequest(
                    appends=[pb.StreamAppend(stream_name=a, events=events(1))]
                ),
            )
        )
    await call.done_writing()
    assert len([answer async for answer in call]) == 4
    await wait_until(lambda: _equals(metered.value(counter), before + 9))


async def test_open_subscriptions_gauge_counts_the_global_log_too(metered: MeteredServer) -> None:
    stub = metered.stub
    gauge = "eventstreaming_subscriptions_open"
    before = await metered.value(gauge) or 0.0
    call = stub.SubscribeToAll(pb.SubscribeToAllRequest(from_end=True))
    await call.read()  # caught up
    await wait_until(lambda: _equals(metered.value(gauge), before + 1))
    call.cancel()
    await wait_until(lambda: _equals(metered.value(gauge), before))


AGE = "eventstreaming_queue_oldest_message_age_seconds"


async def test_the_age_of_each_queue_is_a_gauge() -> None:
    server = await start_metered(metrics_queue_streams=5)
    try:
        queue = unique_name("aged")
        await server.stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(2)))

        async def aged() -> bool:
            age = await server.value(
                "eventstreaming_queue_oldest_message_age_seconds", stream=queue
            )
            return age is not None and age >= 0.3

        await wait_until(aged)
        reply = await server.stub.Dequeue(
            pb.DequeueRequest(stream_name=queue, consumer_id="c", max_messages=2)
        )
        await server.stub.Acknowledge(
            pb.AcknowledgeRequest(
                stream_name=queue,
                consumer_id="c",
                event_ids=[m.event.event_id for m in reply.messages],
            )
        )

        async def empty() -> bool:
            age = await server.value(
                "eventstreaming_queue_oldest_message_age_seconds", stream=queue
            )
            return age == 0

        await wait_until(empty)
    finally:
        await server.close()


async def test_the_queue_table_dead_rows_sizes_and_in_flight_ages(pg_dsn: str) -> None:
    server = await start_metered("postgres", pg_dsn)
    try:
        queue = unique_name("table")
        await server.stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(3)))
        await server.stub.Dequeue(
            pb.DequeueRequest(stream_name=queue, consumer_id="c", max_messages=3)
        )

        async def sampled() -> bool:
            samples = await server.scrape()
            in_flight = samples.get(("eventstreaming_queue_in_flight_by_age", (("le", "+Inf"),)))
            young = samples.get(("eventstreaming_queue_in_flight_by_age", (("le", "3600"),)))
            table = samples.get(("eventstreaming_queue_table_bytes", (("part", "table"),)))
            dead = samples.get(("eventstreaming_queue_table_dead_tuples", ()))
            return (
                in_flight is not None
                and young is not None
                and in_flight >= young >= 3
                and (table or 0) > 0
                and dead is not None
            )

        await wait_until(sampled)
    finally:
        await server.close()


async def test_consume_deliveries_count_as_dequeued(metered: MeteredServer) -> None:
    stub = metered.stub
    queue = unique_name()
    counter = "eventstreaming_messages_dequeued_total"
    before = await metered.value(counter) or 0.0
    await stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(3)))
    call = stub.Consume()
    await call.write(
        pb.ConsumeRequest(
            start=pb.ConsumeStart(stream_name=queue, consumer_id="c", max_outstanding=10)
        )
    )
    delivered = 0
    while delivered < 3:
        item = await asyncio.wait_for(call.read(), 10)
        delivered += 1 if item.HasField("message") else len(item.batch.messages)
    call.cancel()
    await wait_until(lambda: _equals(metered.value(counter), before + 3))

"""PostgreSQL only: live delivery across server processes sharing one database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from storage.postgres import PostgresEventStore
from storage.postgres.notifier import APPLICATION_NAME
from storage.records import NewEvent
from tests.subscriber import Subscriber
from tests.support import ServerProcess, event, unique_name, wait_until

WRITERS = 4
APPENDS_PER_WRITER = 60


@pytest_asyncio.fixture
async def two_servers(pg_dsn: str, tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    env = {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": pg_dsn}
    servers: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            servers.append(await ServerProcess.start(env, tmp_path / f"server-{name}.log"))
        yield servers
    finally:
        for server in servers:
            await server.terminate()


async def test_subscriber_on_one_server_sees_concurrent_appends_through_another(
    two_servers: list[ServerProcess], stream_name: str
) -> None:
    server_a, server_b = two_servers
    async with (
        grpc.aio.insecure_channel(server_a.address) as channel_a,
        grpc.aio.insecure_channel(server_b.address) as channel_b,
    ):
        stub_a = pb_grpc.EventStreamingStub(channel_a)
        stub_b = pb_grpc.EventStreamingStub(channel_b)
        await stub_b.AppendToStream(
            pb.AppendToStreamRequest(stream_name=stream_name, events=[event("First")])
        )
        sub = Subscriber.open(stub_a, stream_name, from_offset=0)
        await sub.until_caught_up()
        written: list[str] = []

        async def writer(number: int) -> None:
            for i in range(APPENDS_PER_WRITER):
                batch = [
                    pb.EventData(
                        event_id=str(uuid.uuid4()),
                        event_type=f"Writer{number}",
                        data=b'{"i": %d}' % i,
                    )
                    for _ in range(1 + i % 3)
                ]
                written.extend(e.event_id for e in batch)
                await stub_b.AppendToStream(
                    pb.AppendToStreamRequest(stream_name=stream_name, events=batch)
                )

        try:
            await asyncio.gather(*(writer(n) for n in range(WRITERS)))
            total = 1 + len(written)
            received = await sub.until_events(total, timeout=30)
            assert [e.offset for e in received] == list(range(total))
            assert sorted(e.event_id for e in received[1:]) == sorted(written)
            assert sub.caught_up == [1]
            # Each writer's events arrive in the order that writer appended them.
            for number in range(WRITERS):
                mine = [e.data for e in received if e.event_type == f"Writer{number}"]
                indexes = [int(d.decode().split(":")[1].strip(" }")) for d in mine]
                assert indexes == sorted(indexes)
        finally:
            sub.cancel()


@pytest_asyncio.fixture
async def two_stores(pg_dsn: str) -> AsyncIterator[tuple[PostgresEventStore, PostgresEventStore]]:
    """Two replicas' stores in this process: each has its own notifier and signals."""
    first, second = PostgresEventStore(pg_dsn), PostgresEventStore(pg_dsn)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def new_event() -> NewEvent:
    return NewEvent(event_id=uuid.uuid4(), event_type="Tested", data=b"{}")


async def test_append_on_one_replica_wakes_waiters_on_another(
    two_stores: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    writer, reader = two_stores
    name = unique_name()
    woken = reader.signals.waiter(name)
    await writer.append_to_stream(name, [new_event()])
    # Only a notification can set it: nothing else in `reader` knows of the write.
    await asyncio.wait_for(woken.wait(), timeout=10)
    other = reader.signals.waiter(unique_name())
    assert not other.is_set()


async def test_notifier_reconnects_and_wakes_every_waiter(
    two_stores: tuple[PostgresEventStore, PostgresEventStore], pg_dsn: str
) -> None:
    writer, reader = two_stores
    name = unique_name()
    waiting = reader.signals.waiter(name)
    admin = await asyncpg.connect(pg_dsn)
    try:
        # Cut every notification connection of this database: both stores' links.
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert killed >= 2
    finally:
        await admin.close()
    # After reconnecting, every waiter is woken to look at storage again...
    await asyncio.wait_for(waiting.wait(), timeout=10)

    # ...and notifications flow again.
    async def delivered() -> bool:
        woken = reader.signals.waiter(name)
        await writer.append_to_stream(name, [new_event()])
        try:
            await asyncio.wait_for(woken.wait(), timeout=0.5)
        except TimeoutError:
            return False
        return True

    await wait_until(delivered, timeout=15)


async def test_an_all_subscriber_on_one_server_is_woken_by_appends_through_another(
    two_servers: list[ServerProcess], stream_name: str
) -> None:
    """Each append through B reaches a SubscribeToAll on A; the typical delay is
    far below the 1 s look at the log's head that would catch a lost notification,
    so the notification woke it."""
    server_a, server_b = two_servers
    async with (
        grpc.aio.insecure_channel(server_a.address) as channel_a,
        grpc.aio.insecure_channel(server_b.address) as channel_b,
    ):
        stub_b = pb_grpc.EventStreamingStub(channel_b)
        sub = Subscriber.open_all(
            pb_grpc.EventStreamingStub(channel_a),
            from_end=True,
            filter=pb.AllFilter(stream_prefixes=[stream_name]),
        )
        await sub.until_caught_up()
        loop = asyncio.get_running_loop()
        delays = []
        for i in range(15):
            started = loop.time()
            reply = await stub_b.AppendToStream(
                pb.AppendToStreamRequest(stream_name=stream_name, events=[event("Live", {"n": i})])
            )
            item = await sub.next()
            while not item.HasField("event"):
                item = await sub.next()
            delays.append(loop.time() - started)
            assert item.event.global_position == reply.first_global_position
        sub.call.cancel()
    delays.sort()
    assert delays[len(delays) // 2] < 0.3, delays

"""PostgreSQL only: queues shared by several server processes, a server killed
while its consumers hold messages, and queue calls racing each other in the database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer
from tests.support import (
    ConsumeClient,
    ServerProcess,
    Stub,
    ack,
    configure_queue,
    dead_letters,
    dequeue,
    enqueue,
    epoch,
    event,
    events,
    ids_of,
    lease_ended,
    metadata,
    nack,
    redrive,
    stub_for,
    unique_name,
    wait_until,
)

MESSAGES = 5000
SERVERS = 2
CONSUMERS_PER_SERVER = 8


def _env(dsn: str) -> dict[str, str]:
    return {
        "EVENTSTREAMING_STORAGE": "postgres",
        "EVENTSTREAMING_DATABASE_URL": dsn,
        "EVENTSTREAMING_LOG_LEVEL": "WARNING",
    }


@pytest_asyncio.fixture
async def two_servers(
    pg_server: RunningServer, pg_dsn: str, tmp_path: Path
) -> AsyncIterator[list[ServerProcess]]:
    # pg_server has migrated the database, so the children start quickly.
    servers = await asyncio.gather(
        *(ServerProcess.start(_env(pg_dsn), tmp_path / f"server-{i}.log") for i in range(SERVERS))
    )
    try:
        yield list(servers)
    finally:
        for server in servers:
            server.kill()


async def test_two_servers_with_eight_consumers_each_deliver_every_message_exactly_once(
    two_servers: list[ServerProcess],
) -> None:
    name = unique_name("drain")
    channels = [grpc.aio.insecure_channel(s.address) for s in two_servers]
    stubs = [stub_for(c) for c in channels]
    enqueued: list[str] = []
    held: set[str] = set()
    held_twice: list[str] = []
    deliveries: Counter[str] = Counter()
    acknowledged: Counter[str] = Counter()
    ack_failures: list[pb.AckFailure] = []

    async def produce() -> None:
        for i in range(MESSAGES // 100):
            reply = await stubs[i % SERVERS].Enqueue(
                pb.EnqueueRequest(stream_name=name, events=events(100))
            )
            enqueued.extend(reply.event_ids)

    async def consume(stub: Stub, consumer: str) -> None:
        while sum(acknowledged.values()) < MESSAGES:
            # A lease far longer than the run: any second delivery is a bug.
            batch = await dequeue(stub, name, consumer, max_messages=25, visibility=120, wait=1)
            for event_id in ids_of(batch):
                if event_id in held:
                    held_twice.append(event_id)
                held.add(event_id)
                deliveries[event_id] += 1
            if not batch:
                continue
            reply = await ack(stub, name, consumer, ids_of(batch))
            for event_id in reply.acknowledged:
                held.discard(event_id)
                acknowledged[event_id] += 1
            ack_failures.extend(reply.failed)

    try:
        consumers = [
            consume(stubs[s], f"server{s}-consumer{c}")
            for s in range(SERVERS)
            for c in range(CONSUMERS_PER_SERVER)
        ]
        await asyncio.wait_for(asyncio.gather(produce(), *consumers), timeout=120)
        meta = await metadata(stubs[0], name)
    finally:
        for channel in channels:
            await channel.close()

    assert len(enqueued) == len(set(enqueued)) == MESSAGES
    assert held_twice == []
    assert ack_failures == []
    assert set(acknowledged) == set(enqueued)
    assert set(acknowledged.values()) == {1}
    assert set(deliveries.values()) == {1}
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)
    assert meta.length == MESSAGES


async def test_messages_held_through_a_killed_server_are_delivered_again_after_their_lease(
    pg_server: RunningServer, pg_dsn: str, tmp_path: Path
) -> None:
    name = unique_name("killed")
    survivor = pg_server.stub
    reply = await survivor.Enqueue(pb.EnqueueRequest(stream_name=name, events=events(30)))
    enqueued = list(reply.event_ids)

    doomed = await ServerProcess.start(_env(pg_dsn), tmp_path / "doomed.log")
    try:
        async with grpc.aio.insecure_channel(doomed.address) as channel:
            stub = stub_for(channel)
            held = await dequeue(stub, name, "doomed-1", max_messages=10, visibility=2)
            held += await dequeue(stub, name, "doomed-2", max_messages=10, visibility=2)
        doomed.kill()
    finally:
        doomed.kill()
    assert len(held) == 20
    lease_ends = {m.event.event_id: epoch(m.visible_until) for m in held}

    received: dict[str, pb.QueueMessage] = {}
    deadline = time.monotonic() + 30
    while len(received) < len(enqueued) and time.monotonic() < deadline:
        batch = await dequeue(survivor, name, "survivor", max_messages=10, visibility=30, wait=5)
        for message in batch:
            assert message.event.event_id not in received, "delivered twice to the survivor"
            received[message.event.event_id] = message
        if batch:
            await ack(survivor, name, "survivor", ids_of(batch))

    assert set(received) == set(enqueued)
    for event_id, message in received.items():
        if event_id in lease_ends:
            assert message.delivery_attempt == 2
            # Handed out again only once the dead server's lease had run out.
            lease_start = epoch(message.visible_until) - 30
            assert lease_start >= lease_ends[event_id] - 0.001
        else:
            assert message.delivery_attempt == 1
    meta = await metadata(survivor, name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


# -- races between queue calls, set up with row locks held from a second session --

WAITING_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND wait_event_type = 'Lock' AND strpos(query, $1) > 0)
"""
#: Text of the statement each call runs (storage/postgres/queue.py, migrations/006).
DEQUEUE_TEXT = "SKIP LOCKED"
ENQUEUE_TEXT = "event_streaming.enqueue_messages("
REDRIVE_TEXT = "event_streaming.redrive_dead_letters("


@pytest_asyncio.fixture
async def sessions(pg_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """A session that holds locks and one that watches who waits for them."""
    locker = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)
    try:
        yield locker, watcher
    finally:
        await locker.close()
        await watcher.close()


@asynccontextmanager
async def rolled_back(session: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction of the session that is rolled back at the end, releasing its locks."""
    transaction = session.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


async def _waiting(watcher: asyncpg.Connection, statement_text: str) -> bool:
    """Whether a session running that statement waits for a lock."""
    return bool(await watcher.fetchval(WAITING_SQL, statement_text))


async def _expired_final_leases(stub: Stub, name: str, count: int) -> list[str]:
    """Messages whose only allowed delivery has run out (dead letters still in the queue).
    Ids are remembered only while in the queue, so an enqueue of one of them goes as
    far as the queue's unique index."""
    await configure_queue(stub, name, max_attempts=1, dedup_window=0)
    ids = await enqueue(stub, name, count)
    held = await dequeue(stub, name, "a", visibility=0.2)
    assert ids_of(held) == ids
    for message in held:
        await lease_ended(message)
    return ids


#: A dead letter with the id of a message in the queue, written as is.
DEAD_LETTER_COPY_SQL = """
INSERT INTO event_streaming.dead_letters (
    stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
    created_at, delivery_attempts, reason, dead_lettered_at)
SELECT stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
       created_at, 1, 'copied', now()
  FROM event_streaming.queue_messages WHERE event_id = $1
"""


async def _hold_dead_letter_slot(locker: asyncpg.Connection, event_id: str) -> None:
    """In the locker's open transaction, take the message's place in the dead-letter
    queue (its unique index entry) without locking the stream row: a call that
    dead-letters the message waits for the locker right after deleting it from the
    queue. Foreign keys are not checked for this session (their check would lock
    the stream row, which is what the calls under test must contend for)."""
    await locker.execute("SET LOCAL session_replication_role = replica")
    await locker.execute(DEAD_LETTER_COPY_SQL, uuid.UUID(event_id))


async def test_a_redrive_and_a_dequeue_that_dead_letters_do_not_deadlock(
    pg_server: RunningServer, sessions: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    stub = pg_server.stub
    locker, watcher = sessions
    name = unique_name("redrive-race")
    (only,) = await _expired_final_leases(stub, name, 1)
    async with rolled_back(locker):
        await _hold_dead_letter_slot(locker, only)
        # The dequeue deletes the message from the queue and waits for the locker
        # before writing its dead letter (and checking that letter's foreign key).
        dequeuing = asyncio.create_task(dequeue(stub, name, "b"))
        await wait_until(lambda: _waiting(watcher, DEQUEUE_TEXT))
        # The redrive locks the stream row, then waits for the dequeue while sweeping
        # expired messages into the dead-letter queue.
        redriving = asyncio.create_task(redrive(stub, name))
        await wait_until(lambda: _waiting(watcher, REDRIVE_TEXT))
    # Released: the dequeue's foreign-key check must not wait for the redrive's lock
    # on the stream row (with FOR UPDATE it did, while the redrive waited for it, and
    # one of the two failed as a deadlock). Which of them finishes first is up to the
    # scheduler: the dequeue may already see the redriven message.
    delivered = await asyncio.wait_for(dequeuing, 30)
    assert await asyncio.wait_for(redriving, 30) == 1
    if not delivered:
        delivered = await dequeue(stub, name, "c")
    assert [(m.event.event_id, m.delivery_attempt) for m in delivered] == [(only, 1)]


async def test_an_id_dead_lettered_while_enqueued_again_is_a_duplicate_not_kept_twice(
    pg_server: RunningServer, sessions: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    stub = pg_server.stub
    locker, watcher = sessions
    name = unique_name("enqueue-race")
    (only,) = await _expired_final_leases(stub, name, 1)
    async with rolled_back(locker):
        await _hold_dead_letter_slot(locker, only)
        dequeuing = asyncio.create_task(dequeue(stub, name, "b"))
        await wait_until(lambda: _waiting(watcher, DEQUEUE_TEXT))
        # The enqueue finds no dead letter with the id yet; its insert waits for the
        # dequeue that is deleting the message with that id from the queue.
        enqueuing = asyncio.ensure_future(
            stub.Enqueue(pb.EnqueueRequest(stream_name=name, events=[event(event_id=only)]))
        )
        await wait_until(lambda: _waiting(watcher, ENQUEUE_TEXT))
    assert await asyncio.wait_for(dequeuing, 30) == []
    reply = await asyncio.wait_for(enqueuing, 30)
    assert list(reply.duplicate_event_ids) == [only]
    meta = await metadata(stub, name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 1)
    (letter,) = await dead_letters(stub, name)
    assert (letter.event.event_id, letter.reason) == (only, "visibility timeout expired")
    assert await redrive(stub, name) == 1
    (back,) = await dequeue(stub, name, "c")
    assert (back.event.event_id, back.delivery_attempt) == (only, 1)


async def test_redrive_leaves_a_dead_letter_whose_id_is_in_the_queue_again(
    pg_server: RunningServer, pg_dsn: str
) -> None:
    stub = pg_server.stub
    name = unique_name("redrive-twice")
    await configure_queue(stub, name, max_attempts=1)
    (dead,) = await enqueue(stub, name)
    await dequeue(stub, name, "a")
    await nack(stub, name, "a", dead, reason="bad")
    (queued,) = await enqueue(stub, name)
    # A state older versions could reach: the same id pending and dead-lettered.
    session = await asyncpg.connect(pg_dsn)
    try:
        await session.execute(DEAD_LETTER_COPY_SQL, uuid.UUID(queued))
    finally:
        await session.close()
    assert await redrive(stub, name, [queued]) == 0
    assert await redrive(stub, name) == 1
    assert [d.event.event_id for d in await dead_letters(stub, name)] == [queued]
    back = await dequeue(stub, name, "b")
    assert ids_of(back) == [queued, dead]


# -- Consume streams on two servers ---------------------------------------------------


async def test_consume_streams_on_two_servers_share_a_queue_without_overlap(
    two_servers: list[ServerProcess],
) -> None:
    name = unique_name("consume-two")
    channels = [grpc.aio.insecure_channel(s.address) for s in two_servers]
    stubs = [stub_for(c) for c in channels]
    total = 400
    received: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(client: ConsumeClient, label: str, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                (message,) = await client.receive(timeout=0.2)
            except TimeoutError:
                continue
            received[label].append(message.event.event_id)
            await client.ack(receipts=[message.receipt])
            if sum(len(r) for r in received.values()) >= total:
                done.set()

    try:
        await configure_queue(stubs[0], name, visibility=120)
        a = await ConsumeClient.start(stubs[0], name, "a", max_outstanding=10, visibility=120)
        b = await ConsumeClient.start(stubs[1], name, "b", max_outstanding=10, visibility=120)
        done = asyncio.Event()
        consumers = [
            asyncio.create_task(consume(a, "a", done)),
            asyncio.create_task(consume(b, "b", done)),
        ]
        enqueued: list[str] = []
        for i in range(total // 20):
            reply = await stubs[i % 2].Enqueue(
                pb.EnqueueRequest(stream_name=name, events=events(20))
            )
            enqueued += reply.event_ids
        await asyncio.wait_for(done.wait(), timeout=60)
        await asyncio.gather(*consumers)
        assert await a.close() == grpc.StatusCode.OK
        assert await b.close() == grpc.StatusCode.OK
        # Each delivered once, to one of the two; both took part.
        assert sorted(received["a"] + received["b"]) == sorted(enqueued)
        assert not set(received["a"]) & set(received["b"])
        assert received["a"]
        assert received["b"]

        # A stream that half-closes gives its messages back at once, and a stream
        # on the other server gets them.
        held = await enqueue(stubs[0], name, 5)
        a = await ConsumeClient.start(stubs[0], name, "a", max_outstanding=10, visibility=120)
        assert sorted(ids_of(await a.receive(5))) == sorted(held)
        c = await ConsumeClient.start(stubs[1], name, "c", max_outstanding=10, visibility=120)
        await asyncio.sleep(0.3)
        assert c.messages.empty()
        assert await a.close() == grpc.StatusCode.OK
        again = await c.receive(5)
        assert sorted(ids_of(again)) == sorted(held)
        assert {m.delivery_attempt for m in again} == {2}
        await c.ack(receipts=[m.receipt for m in again])
        assert await c.close() == grpc.StatusCode.OK
        meta = await metadata(stubs[1], name)
        assert (meta.pending_count, meta.in_flight_count) == (0, 0)
    finally:
        for channel in channels:
            await channel.close()

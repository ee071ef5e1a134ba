"""PostgreSQL only: queues shared by several server processes, and a server killed
while its consumers hold messages."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer
from tests.queue_support import Stub, ack, dequeue, epoch, ids_of, metadata
from tests.support import ServerProcess, events, stub_for, unique_name

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

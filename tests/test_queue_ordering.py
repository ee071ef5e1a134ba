"""Ordering keys under load: 16 consumers with random nacks and leases left to run
out, on one server per backend and, on PostgreSQL, on two server processes one of
which is killed (SIGKILL) and restarted mid-run. Per key, messages are processed in
order and never two at once; every message is processed; nothing is left."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer
from tests.support import (
    ServerProcess,
    Stub,
    ack,
    configure_queue,
    dequeue,
    epoch,
    metadata,
    nack,
    stub_for,
    unique_name,
    wait_until,
)

KEYS = 16
PER_KEY = 25
CONSUMERS = 16
#: Short enough to see leases run out, long enough for a busy machine to ack in.
VISIBILITY = 1.0
NACK_CHANCE = 0.15
FORGET_CHANCE = 0.08


@dataclass
class Delivery:
    key: str
    seq: int
    attempt: int
    #: When the lease began (database clock) and when this consumer let go of it
    #: (sent its ack or nack; the lease's end when it did neither).
    start: float
    end: float


@dataclass
class Run:
    deliveries: dict[str, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    #: Acknowledgements answered (one lost with a killed server is not counted).
    done: set[tuple[str, int]] = field(default_factory=set)
    #: Set once everything was enqueued and the queue is empty.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: Codes of the calls that failed.
    errors: list[grpc.StatusCode] = field(default_factory=list)


def _batches() -> list[list[pb.EventData]]:
    """Every key's messages in order, the keys interleaved across batches of 40."""
    events = [
        pb.EventData(
            event_type="Step",
            data=json.dumps({"key": f"key-{k}", "seq": s}).encode(),
            ordering_key=f"key-{k}",
        )
        for s in range(PER_KEY)
        for k in range(KEYS)
    ]
    return [events[i : i + 40] for i in range(0, len(events), 40)]


async def _consume(stubs: list[Stub], name: str, consumer: str, run: Run, seed: int) -> None:
    chance = random.Random(seed)
    turn = 0
    while not run.finished.is_set():
        stub = stubs[turn % len(stubs)]
        turn += 1
        try:
            batch = await dequeue(
                stub, name, consumer, max_messages=3, visibility=VISIBILITY, wait=1
            )
            for message in batch:
                body = json.loads(message.event.data)
                start = epoch(message.visible_until) - VISIBILITY
                delivery = Delivery(
                    message.event.ordering_key, body["seq"], message.delivery_attempt, start, 0.0
                )
                assert body["key"] == delivery.key
                run.deliveries[delivery.key].append(delivery)
                roll = chance.random()
                delivery.end = epoch(message.visible_until)
                if roll < FORGET_CHANCE:
                    continue  # left to its lease
                await asyncio.sleep(chance.random() * 0.01)  # the work
                delivery.end = min(delivery.end, time.time())
                if roll < FORGET_CHANCE + NACK_CHANCE:
                    await nack(stub, name, consumer, message.event.event_id)
                    continue
                reply = await ack(stub, name, consumer, [message.event.event_id])
                if list(reply.acknowledged) == [message.event.event_id]:
                    run.done.add((delivery.key, delivery.seq))
        except grpc.aio.AioRpcError as exc:
            # A server killed under us, or a late answer: another delivery follows.
            run.errors.append(exc.code())
            await asyncio.sleep(0.05)


#: How calls may fail: a server killed under them, or a nack or ack that came late.
EXPECTED_ERRORS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _check(run: Run) -> None:
    assert set(run.errors) <= EXPECTED_ERRORS
    redeliveries = sum(d.attempt > 1 for ds in run.deliveries.values() for d in ds)
    assert redeliveries >= 10, "the run should have nacked and let leases run out"
    assert set(run.deliveries) == {f"key-{k}" for k in range(KEYS)}
    for key, deliveries in run.deliveries.items():
        ordered = sorted(deliveries, key=lambda d: d.start)
        highest = -1
        for before, after in itertools.pairwise(ordered):
            # Never two at once: each lease of the key began after the previous
            # consumer let go of its message (clocks of one machine; 5 ms slack).
            assert after.start >= before.end - 0.005, (key, before, after)
        for delivery in ordered:
            # In order: no message is delivered after a later one of its key.
            assert delivery.seq >= highest, (key, [(d.seq, d.attempt) for d in ordered])
            highest = delivery.seq
        assert {d.seq for d in deliveries} == set(range(PER_KEY)), key


async def _enqueue_all(stub: Stub, name: str, run: Run) -> None:
    """Enqueue everything, then watch the queue until it is empty."""
    for batch in _batches():
        reply = await stub.Enqueue(pb.EnqueueRequest(stream_name=name, events=batch))
        assert not reply.duplicate_event_ids

    async def empty() -> bool:
        return (await metadata(stub, name)).retained_count == 0

    await wait_until(empty, timeout=240, interval=0.2)
    run.finished.set()


async def test_keys_hold_under_sixteen_consumers_with_nacks_and_expiries(
    server: RunningServer,
) -> None:
    name = unique_name("keys")
    stubs = [server.stub]
    await configure_queue(stubs[0], name, max_attempts=1000, visibility=VISIBILITY)
    run = Run()
    await asyncio.wait_for(
        asyncio.gather(
            _enqueue_all(stubs[0], name, run),
            *(_consume(stubs, name, f"c{i}", run, i) for i in range(CONSUMERS)),
        ),
        timeout=240,
    )
    _check(run)
    meta = await metadata(stubs[0], name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


def _env(dsn: str) -> dict[str, str]:
    return {
        "EVENTSTREAMING_STORAGE": "postgres",
        "EVENTSTREAMING_DATABASE_URL": dsn,
        "EVENTSTREAMING_LOG_LEVEL": "WARNING",
    }


async def test_keys_hold_on_two_servers_through_a_killed_one(
    pg_server: RunningServer, pg_dsn: str, tmp_path: Path
) -> None:
    servers = list(
        await asyncio.gather(
            *(ServerProcess.start(_env(pg_dsn), tmp_path / f"server-{i}.log") for i in range(2))
        )
    )
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    stubs = [stub_for(c) for c in channels]
    name = unique_name("keys-killed")
    run = Run()
    kills = 0

    async def kill_and_restart() -> None:
        """SIGKILL one server, then the other, then the first again, while the
        consumers on it hold messages; each comes back on its port."""
        nonlocal kills
        for fraction in (0.2, 0.5, 0.8):
            await wait_until(
                lambda: len(run.done) >= fraction * KEYS * PER_KEY,  # noqa: B023
                timeout=240,
                interval=0.05,
            )
            index = kills % 2
            victim = servers[index]
            victim.kill()
            kills += 1
            await asyncio.sleep(0.3)
            servers[index] = await ServerProcess.start(
                _env(pg_dsn), tmp_path / f"restart-{kills}.log", port=victim.port
            )

    try:
        await configure_queue(stubs[0], name, max_attempts=1000, visibility=VISIBILITY)
        await asyncio.wait_for(
            asyncio.gather(
                _enqueue_all(pg_server.stub, name, run),
                kill_and_restart(),
                # Eight consumers on each server.
                *(
                    _consume([stubs[i % 2]], name, f"s{i % 2}-c{i}", run, i)
                    for i in range(CONSUMERS)
                ),
            ),
            timeout=240,
        )
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            server.kill()
    assert kills == 3
    assert grpc.StatusCode.UNAVAILABLE in run.errors, "the kills should have cut calls"
    _check(run)
    meta = await metadata(pg_server.stub, name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)

"""PostgreSQL: the global log is gap-safe and dense under load and faults.

Several server processes on one database, many writers on many streams (some calls
cut short by their deadline, so their transactions roll back; one replica
SIGKILLed mid-append and restarted), and concurrent ReadAll pollers and
SubscribeToAll subscribers that record every position they are shown. Afterwards:
no reader ever saw position P and later a position below P, no subscriber missed
one, the final log is exactly positions 1..N, every acknowledged append is there at
the positions its answer gave, and every other call is there whole or not at all.

(This is the check that catches the classic bug of a sequence-numbered event table:
a reader moving past position N while N is still uncommitted, and never seeing it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.support import (
    ServerProcess,
    Stub,
    create_database,
    drop_database,
    dsn_for,
    stub_for,
    wait_until,
)

REPLICAS = 3
WRITERS = 24
STREAMS = 40
#: How long the writers write, and when the third replica is killed (and restarted).
WRITE_SECONDS = 8.0
KILLS_AT = (2.0, 5.0)


@dataclass
class Call:
    """One append as issued: its events' ids per stream, and what came back."""

    appends: list[tuple[str, list[str]]]
    #: The global positions of its events, in call order, when acknowledged.
    positions: list[int] | None = None


@dataclass
class Reader:
    """Every position a reader was shown, in the order shown."""

    seen: list[int] = field(default_factory=list)
    went_back: list[tuple[int, int]] = field(default_factory=list)

    def saw(self, position: int) -> None:
        if self.seen and position <= self.seen[-1]:
            self.went_back.append((self.seen[-1], position))
        self.seen.append(position)


@pytest_asyncio.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[list[ServerProcess], dict[str, str]]]:
    database = await create_database()
    env = {
        "EVENTSTREAMING_STORAGE": "postgres",
        "EVENTSTREAMING_DATABASE_URL": dsn_for(database),
        "EVENTSTREAMING_LOG_LEVEL": "WARNING",
    }
    servers: list[ServerProcess] = []
    try:
        for i in range(REPLICAS):
            servers.append(await ServerProcess.start(env, tmp_path / f"replica{i}.log"))
        yield servers, env
    finally:
        for server in servers:
            with contextlib.suppress(AssertionError):
                await server.terminate()
        await drop_database(database)


async def test_readers_never_see_a_position_go_back_and_miss_none(
    replicas: tuple[list[ServerProcess], dict[str, str]], tmp_path: Path
) -> None:
    servers, env = replicas
    calls: list[Call] = []
    stop = asyncio.Event()
    channels = {i: grpc.aio.insecure_channel(s.address) for i, s in enumerate(servers)}
    retired: list[grpc.aio.Channel] = []

    def stub(i: int) -> Stub:
        return stub_for(channels[i])

    async def writer(w: int) -> None:
        rng = random.Random(w)
        while not stop.is_set():
            names = rng.sample(range(STREAMS), rng.choice([1, 1, 1, 2, 3]))
            call = Call(
                [
                    (f"order-{n}", [str(uuid.uuid4()) for _ in range(rng.randint(1, 3))])
                    for n in names
                ]
            )
            calls.append(call)
            request = pb.AppendToStreamsRequest(
                appends=[
                    pb.StreamAppend(
                        stream_name=name,
                        events=[pb.EventData(event_id=i, event_type="T", data=b"{}") for i in ids],
                    )
                    for name, ids in call.appends
                ]
            )
            # A few calls get a deadline too short to finish: rolled back mid-way.
            timeout = 0.003 if rng.random() < 0.1 else 10.0
            try:
                reply = await stub(w % REPLICAS).AppendToStreams(request, timeout=timeout)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.01)
                continue
            call.positions = [
                p
                for result in reply.results
                for p in range(result.first_global_position, result.last_global_position + 1)
            ]

    async def poller(reader: Reader, replica: int) -> None:
        position = 0
        while not stop.is_set() or position == 0:
            try:
                page = await stub(replica).ReadAll(
                    pb.ReadAllRequest(from_position=position, max_count=200), timeout=10
                )
            except grpc.aio.AioRpcError:
                continue
            for event in page.events:
                reader.saw(event.global_position)
            position = page.next_position
            if page.end_of_log:
                await asyncio.sleep(0.005)

    async def subscriber(reader: Reader, replica: int) -> None:
        call = stub(replica).SubscribeToAll(pb.SubscribeToAllRequest(from_position=1))
        async for item in call:
            if item.HasField("event"):
                reader.saw(item.event.global_position)

    async def killer() -> None:
        started = time.monotonic()
        for at in KILLS_AT:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            victim = servers[2]
            victim.kill()
            servers[2] = await ServerProcess.start(
                env, tmp_path / "replica2-again.log", port=victim.port
            )
            # The old channel stays open (closing it would cancel calls in flight
            # as if their callers had): it is closed with the others at the end.
            retired.append(channels[2])
            channels[2] = grpc.aio.insecure_channel(servers[2].address)

    pollers = [Reader() for _ in range(2)]
    subscribers = [Reader() for _ in range(2)]
    reading = [asyncio.create_task(poller(r, i)) for i, r in enumerate(pollers)]
    following = [asyncio.create_task(subscriber(r, i)) for i, r in enumerate(subscribers)]
    writing = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    try:
        await asyncio.gather(killer(), asyncio.sleep(WRITE_SECONDS))
        stop.set()
        await asyncio.gather(*writing)
        await asyncio.gather(*reading)

        # The whole log, read after the fact.
        final: list[pb.Event] = []
        position = 0
        while True:
            page = await stub(0).ReadAll(pb.ReadAllRequest(from_position=position, max_count=1000))
            final.extend(page.events)
            position = page.next_position
            if page.end_of_log:
                break
        total_positions = len(final)
        for reader in subscribers:
            await wait_until(
                lambda r=reader: r.seen and r.seen[-1] >= total_positions,  # type: ignore[misc]
                timeout=60,
            )
    finally:
        for task in (*reading, *following, *writing):
            task.cancel()
        for channel in (*channels.values(), *retired):
            await channel.close()

    # Dense: exactly 1..N, nothing missing, nothing twice.
    assert [e.global_position for e in final] == list(range(1, total_positions + 1))
    ids = [e.event_id for e in final]
    assert len(set(ids)) == len(ids)
    at = {e.event_id: e.global_position for e in final}
    acknowledged = [c for c in calls if c.positions is not None]
    assert acknowledged, "no append was acknowledged"
    for call in calls:
        call_ids = [i for _, batch in call.appends for i in batch]
        if call.positions is not None:
            # Where its answer said, its events together and in order.
            assert [at.get(i) for i in call_ids] == call.positions
        else:
            # Rolled back or lost with its replica: whole or not at all.
            present = [i in at for i in call_ids]
            assert all(present) or not any(present)
    issued = {i for call in calls for _, batch in call.appends for i in batch}
    assert set(ids) <= issued

    # Gap-safe: no reader was ever shown a position below one it had seen.
    for reader in (*pollers, *subscribers):
        assert not reader.went_back, f"went back: {reader.went_back[:5]}"
    # Subscribers (never killed) saw every position, once.
    for reader in subscribers:
        assert reader.seen == list(range(1, total_positions + 1))
    # The pollers saw a growing prefix of the log.
    for reader in pollers:
        assert reader.seen == list(range(1, len(reader.seen) + 1))

"""Pool connections killed under load (``pg_terminate_backend``, as a database
failover or an administrator does): callers see UNAVAILABLE and nothing else, a
broken connection fails at most the call that found it broken, and every
acknowledged append is in place afterwards."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest_asyncio

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import server_settings
from tests.support import create_database, drop_database, dsn_for, event, read_all, unique_name

POOL_SIZE = 6
WRITERS = 12
READERS = 4
STREAMS = 4
KILL_ROUNDS = 25

#: Every backend of the database but the caller's own and the notifier's.
KILL_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = $1 AND pid <> pg_backend_pid()
   AND application_name <> 'eventstreaming-notifier'
"""


@pytest_asyncio.fixture
async def fault_server() -> AsyncIterator[tuple[EventStreamingServer, str]]:
    """A server on a database of its own (the kills must not reach other tests)."""
    database = await create_database()
    app = EventStreamingServer(
        server_settings(
            "postgres", dsn_for(database), pool_min_size=POOL_SIZE, pool_max_size=POOL_SIZE
        )
    )
    await app.start()
    try:
        yield app, database
    finally:
        await app.stop(grace=1)
        await drop_database(database)


async def test_killed_pool_connections_give_only_unavailable(
    fault_server: tuple[EventStreamingServer, str],
) -> None:
    app, database = fault_server
    names = [unique_name("faults") for _ in range(STREAMS)]
    codes: collections.Counter[str] = collections.Counter()
    acknowledged: dict[str, dict[int, int]] = {name: {} for name in names}
    stop = asyncio.Event()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)

        async def writer(w: int) -> None:
            name = names[w % STREAMS]
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    reply = await stub.AppendToStream(
                        pb.AppendToStreamRequest(
                            stream_name=name, events=[event(payload={"w": w, "i": i})]
                        )
                    )
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    continue
                codes["OK"] += 1
                acknowledged[name][reply.first_offset] = w * 1_000_000 + i

        async def reader(r: int) -> None:
            while not stop.is_set():
                try:
                    await stub.ReadStream(
                        pb.ReadStreamRequest(stream_name=names[r % STREAMS], max_count=50)
                    )
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    # A read before the stream's first append is NOT_FOUND.
                    codes[exc.code().name] += 1

        admin = await asyncpg.connect(dsn_for(database))
        try:
            tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
            tasks += [asyncio.create_task(reader(r)) for r in range(READERS)]
            killed = 0
            for _ in range(KILL_ROUNDS):
                await asyncio.sleep(0.1)
                killed += await admin.fetchval(KILL_SQL, database)
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            await admin.close()

        assert killed >= KILL_ROUNDS
        assert codes["UNAVAILABLE"] > 0, "the kills never reached a call"
        unexpected = {
            code: n for code, n in codes.items() if code not in ("OK", "UNAVAILABLE", "NOT_FOUND")
        }
        assert not unexpected, f"codes other than OK and UNAVAILABLE: {dict(codes)}"

        # The faults are over: each connection broken by them fails at most the one
        # call that finds it broken, and is never handed out again.
        after: collections.Counter[str] = collections.Counter()
        for _ in range(10 * POOL_SIZE):
            try:
                await stub.AppendToStream(
                    pb.AppendToStreamRequest(stream_name=names[0], events=[event()])
                )
                after["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                after[exc.code().name] += 1
        assert set(after) <= {"OK", "UNAVAILABLE"}
        assert after["UNAVAILABLE"] <= POOL_SIZE

        # Every acknowledged append is where its answer said, written once.
        for name in names:
            stored = {e.offset: json.loads(e.data) for e in await read_all(stub, name)}
            assert sorted(stored) == list(range(len(stored))), "offsets have a gap"
            for offset, tag in acknowledged[name].items():
                assert stored[offset] == {"w": tag // 1_000_000, "i": tag % 1_000_000}

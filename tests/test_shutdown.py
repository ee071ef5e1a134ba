"""Graceful shutdown on SIGTERM: health turns NOT_SERVING, new calls are refused,
calls in progress finish within the grace period (and no later), subscriptions
end with UNAVAILABLE, the pool closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from storage.errors import StorageUnavailable
from storage.postgres import PostgresEventStore
from tests.conftest import server_settings
from tests.support import ServerProcess, append_in_progress, events, unique_name, wait_until


@pytest_asyncio.fixture
async def locker(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, to hold row locks on the server's tables."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def start_process(pg_dsn: str, tmp_path: Path, grace: float) -> ServerProcess:
    return await ServerProcess.start(
        {
            "EVENTSTREAMING_STORAGE": "postgres",
            "EVENTSTREAMING_DATABASE_URL": pg_dsn,
            "EVENTSTREAMING_SHUTDOWN_GRACE_SECONDS": str(grace),
        },
        tmp_path / "server.log",
    )


async def refused(address: str) -> bool:
    """Whether a new call to ``address`` is refused."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await pb_grpc.EventStreamingStub(channel).ListStreams(
                pb.ListStreamsRequest(page_size=1), timeout=1
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return False


async def test_append_in_progress_at_sigterm_completes_and_is_readable_afterwards(
    pg_dsn: str, locker: asyncpg.Connection, tmp_path: Path
) -> None:
    process = await start_process(pg_dsn, tmp_path, grace=20)
    name = unique_name()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(1)))
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            async with append_in_progress(locker, stub, name) as append:
                assert process.process.poll() is None
                process.process.terminate()  # SIGTERM
                update = await asyncio.wait_for(watch.read(), 10)
                assert isinstance(update, health_pb2.HealthCheckResponse)
                assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
                await wait_until(lambda: refused(process.address))
                assert not append.done()
            result = await append
            assert (result.first_offset, result.last_offset) == (1, 2)
        assert await process.terminate(timeout=30) == 0
    finally:
        process.kill()
    assert "server stopped" in process.log()

    again = await start_process(pg_dsn, tmp_path, grace=1)
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            read = await pb_grpc.EventStreamingStub(channel).ReadStream(
                pb.ReadStreamRequest(stream_name=name)
            )
        assert [e.offset for e in read.events] == [0, 1, 2]
    finally:
        assert await again.terminate() == 0


async def test_a_call_outlasting_the_grace_period_is_cut_off_and_nothing_half_written(
    pg_dsn: str, locker: asyncpg.Connection, tmp_path: Path
) -> None:
    grace = 1.0
    process = await start_process(pg_dsn, tmp_path, grace=grace)
    name = unique_name()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(1)))
            async with append_in_progress(locker, stub, name) as append:
                signalled = time.monotonic()
                process.process.terminate()
                with pytest.raises(grpc.aio.AioRpcError):
                    await append
                code = await process.terminate(timeout=30)
                took = time.monotonic() - signalled
            assert code == 0
            # Generous bound: the grace period plus the time to close the pool.
            assert took < grace + 15
    finally:
        process.kill()
    length = await locker.fetchval(
        "SELECT count(*) FROM event_streaming.events e"
        " JOIN event_streaming.streams s USING (stream_id) WHERE s.stream_name = $1",
        name,
    )
    assert length == 1


async def test_subscriptions_end_with_unavailable_and_the_pool_closes(pg_dsn: str) -> None:
    app = EventStreamingServer(server_settings("postgres", pg_dsn, shutdown_grace_seconds=30))
    await app.start()
    name = unique_name()
    stopping: asyncio.Task[None] | None = None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        try:
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(1)))
            call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_name=name))
            first = await call.read()
            assert isinstance(first, pb.SubscribeToStreamResponse)
            assert first.event.offset == 0
            caught_up = await call.read()
            assert isinstance(caught_up, pb.SubscribeToStreamResponse)
            assert caught_up.HasField("caught_up")
            started = time.monotonic()
            stopping = asyncio.ensure_future(app.stop())
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), 10)
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            await asyncio.wait_for(stopping, 20)
            # Ending subscriptions does not wait out the 30 s grace period.
            assert time.monotonic() - started < 15
        finally:
            if stopping is None:
                await app.stop(grace=0)
    assert isinstance(app.store, PostgresEventStore)
    with pytest.raises(StorageUnavailable):
        _ = app.store.db

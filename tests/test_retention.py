"""Retention: events expire by age and by count; offsets of the rest never change."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from google.protobuf.duration_pb2 import Duration

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.retention import RetentionTask
from storage.postgres import admin as postgres_admin
from tests.conftest import RunningServer
from tests.subscriber import Subscriber
from tests.support import ROOT, append, events, unique_name, wait_until

Stub = pb_grpc.EventStreamingStub


async def configure(
    stub: Stub, name: str, *, max_count: int = 0, max_age: timedelta | None = None
) -> None:
    config = pb.StreamConfiguration(
        stream_type=pb.STREAM_TYPE_PERSISTENT, retention_max_count=max_count
    )
    if max_age is not None:
        config.retention_max_age.CopyFrom(Duration(seconds=int(max_age.total_seconds())))
    await stub.ConfigureStream(pb.ConfigureStreamRequest(stream_name=name, configuration=config))


async def metadata(stub: Stub, name: str) -> pb.GetStreamMetadataResponse:
    return await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name))


async def read_offsets(stub: Stub, name: str, from_offset: int = 0) -> list[int]:
    reply = await stub.ReadStream(
        pb.ReadStreamRequest(stream_name=name, from_offset=from_offset, max_count=1000)
    )
    return [e.offset for e in reply.events]


async def timestamp_at(stub: Stub, name: str, offset: int) -> datetime:
    reply = await stub.ReadStream(
        pb.ReadStreamRequest(stream_name=name, from_offset=offset, max_count=1)
    )
    return reply.events[0].timestamp.ToDatetime(tzinfo=UTC)


async def test_retention_by_count_keeps_the_newest_events(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await configure(stub, stream_name, max_count=3)
    await append(stub, stream_name, 10)
    report = await server.store.enforce_retention()
    assert report.events_deleted >= 7
    meta = await metadata(stub, stream_name)
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        10,
        3,
        7,
        9,
    )
    # Reads from below the oldest offset start at it; offsets are unchanged.
    assert await read_offsets(stub, stream_name, 0) == [7, 8, 9]
    assert await read_offsets(stub, stream_name, 8) == [8, 9]
    # Appends go on from where the stream was.
    assert (await append(stub, stream_name, 2)).first_offset == 10
    await server.store.enforce_retention()
    assert await read_offsets(stub, stream_name) == [9, 10, 11]


async def test_retention_by_age_deletes_only_older_events(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    max_age = timedelta(hours=1)
    await configure(stub, stream_name, max_age=max_age)
    await append(stub, stream_name, 4)
    await append(stub, stream_name, 3)
    second_batch = await timestamp_at(stub, stream_name, 4)
    assert await timestamp_at(stub, stream_name, 3) < second_batch

    # An hour after the second batch, the first has expired and the second has not.
    await server.store.enforce_retention(now=second_batch + max_age)
    meta = await metadata(stub, stream_name)
    assert (meta.oldest_offset, meta.retained_count, meta.length) == (4, 3, 7)
    assert meta.oldest_event_timestamp.ToDatetime(tzinfo=UTC) == second_batch
    assert await read_offsets(stub, stream_name) == [4, 5, 6]

    # Later still, everything has expired; the length stays.
    await server.store.enforce_retention(now=second_batch + max_age + timedelta(seconds=1))
    meta = await metadata(stub, stream_name)
    assert (meta.retained_count, meta.oldest_offset, meta.newest_offset, meta.length) == (
        0,
        -1,
        6,
        7,
    )
    reply = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name))
    assert list(reply.events) == []
    assert (reply.next_offset, reply.end_of_stream) == (7, True)
    assert (await append(stub, stream_name, 1)).first_offset == 7


async def test_retention_applies_the_stricter_of_age_and_count(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await configure(stub, stream_name, max_count=5, max_age=timedelta(hours=1))
    await append(stub, stream_name, 3)
    await append(stub, stream_name, 4)
    newest = await timestamp_at(stub, stream_name, 3)
    # Count alone keeps offsets 2..6; age (an hour on) keeps only 3..6.
    await server.store.enforce_retention(now=datetime.now(UTC))
    assert await read_offsets(stub, stream_name) == [2, 3, 4, 5, 6]
    await server.store.enforce_retention(now=newest + timedelta(hours=1))
    assert await read_offsets(stub, stream_name) == [3, 4, 5, 6]


async def test_ids_of_deleted_events_are_forgotten(server: RunningServer, stream_name: str) -> None:
    stub = server.stub
    await configure(stub, stream_name, max_count=2)
    first = pb.EventData(event_id=str(uuid.uuid4()), event_type="Tested", data=b"{}")
    await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=stream_name, events=[first]))
    await append(stub, stream_name, 3)
    # A retry of the first append is recognised while the event is retained...
    retry = await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=stream_name, events=[first])
    )
    assert retry.first_offset == 0
    await server.store.enforce_retention()
    # ...and written anew once retention deleted it.
    again = await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=stream_name, events=[first])
    )
    assert again.first_offset == 4
    assert await read_offsets(stub, stream_name) == [2, 3, 4]


async def test_streams_without_a_policy_and_queues_are_left_alone(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    queue = unique_name("queue")
    await append(stub, stream_name, 5)
    await stub.Enqueue(pb.EnqueueRequest(stream_name=queue, events=events(4)))
    await server.store.enforce_retention(now=datetime.now(UTC) + timedelta(days=3650))
    assert await read_offsets(stub, stream_name) == [0, 1, 2, 3, 4]
    assert (await metadata(stub, queue)).pending_count == 4


async def test_subscriber_from_below_the_oldest_offset_starts_at_it(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await configure(stub, stream_name, max_count=2)
    await append(stub, stream_name, 6)
    await server.store.enforce_retention()
    sub = Subscriber.open(stub, stream_name, from_offset=0)
    try:
        assert [e.offset for e in await sub.until_caught_up()] == [4, 5]
    finally:
        sub.cancel()


async def test_retention_task_enforces_on_its_interval(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await configure(stub, stream_name, max_count=1)
    await append(stub, stream_name, 5)
    task = RetentionTask(server.store, interval=0.05)
    task.start()
    try:

        async def only_newest() -> bool:
            return await read_offsets(stub, stream_name) == [4]

        await wait_until(only_newest, timeout=10)
        passes = task.passes
        await wait_until(lambda: task.passes > passes, timeout=10)
    finally:
        await task.stop()


async def test_postgres_retention_deletes_a_backlog_in_batches(
    pg_server: RunningServer, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_admin, "RETENTION_BATCH_SIZE", 100)
    stub = pg_server.stub
    await configure(stub, stream_name, max_count=10)
    for _ in range(5):
        await append(stub, stream_name, 205)
    batches: list[int] = []
    count = postgres_admin._deleted_count

    def record(status: str) -> int:
        batches.append(count(status))
        return batches[-1]

    monkeypatch.setattr(postgres_admin, "_deleted_count", record)
    report = await pg_server.store.enforce_retention()
    assert report.events_deleted >= 1015
    meta = await metadata(stub, stream_name)
    assert (meta.oldest_offset, meta.retained_count, meta.length) == (1015, 10, 1025)
    assert await read_offsets(stub, stream_name) == list(range(1015, 1025))
    # Each statement (and so each transaction) deleted at most one batch.
    assert max(batches) <= 100
    assert sum(batches) >= 1015
    assert len(batches) >= 11


async def test_postgres_retention_runs_on_one_replica_at_a_time(
    pg_server: RunningServer, pg_dsn: str, stream_name: str
) -> None:
    stub = pg_server.stub
    await configure(stub, stream_name, max_count=1)
    await append(stub, stream_name, 3)
    other_replica = await asyncpg.connect(pg_dsn)
    try:
        assert await other_replica.fetchval(
            "SELECT pg_try_advisory_lock($1)", postgres_admin.RETENTION_LOCK_KEY
        )
        report = await pg_server.store.enforce_retention()
        assert (report.streams_examined, report.events_deleted) == (0, 0)
        assert await read_offsets(stub, stream_name) == [0, 1, 2]
        await other_replica.execute(
            "SELECT pg_advisory_unlock($1)", postgres_admin.RETENTION_LOCK_KEY
        )
        report = await pg_server.store.enforce_retention()
        assert report.streams_examined >= 1
        assert await read_offsets(stub, stream_name) == [2]
    finally:
        await other_replica.close()


async def test_cli_runs_one_retention_pass(
    pg_server: RunningServer, pg_dsn: str, stream_name: str
) -> None:
    stub = pg_server.stub
    await configure(stub, stream_name, max_count=2)
    await append(stub, stream_name, 7)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "retention",
        "run-once",
        cwd=ROOT,
        env={
            **os.environ,
            "EVENTSTREAMING_STORAGE": "postgres",
            "EVENTSTREAMING_DATABASE_URL": pg_dsn,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert "event(s) deleted" in out.decode()
    assert await read_offsets(stub, stream_name) == [5, 6]

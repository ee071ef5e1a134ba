"""PostgreSQL only: how the queue's statements do their work. The dequeue reads no
parked message and starts at its low-water mark (counted in buffers the plan
touches, not in time); the SQL retry delay follows the shared rule; retention
forgets remembered ids in batches; migration 006 keeps the messages of a queue
written before it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from storage.postgres import PostgresEventStore
from storage.postgres.migrations import BOOTSTRAP_SQL, INSERT_APPLIED_SQL, load_migrations
from storage.postgres.queue import DEQUEUE_SQL
from storage.records import NewEvent, StreamConfiguration, StreamType
from storage.rules import EXPIRED_REASON, FORGET_BATCH_SIZE, retry_delay
from tests.support import create_database, drop_database, dsn_for, unique_name, wait_until

#: Buffers an index scan of the dequeue may touch: a descent and a page or two.
INDEX_SCAN_BUFFERS = 12


@pytest_asyncio.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn, server_settings={"jit": "off"})
    try:
        yield conn
    finally:
        await conn.close()


def _event(key: str = "") -> NewEvent:
    return NewEvent(uuid.uuid4(), "Tested", b'{"n": 1}', ordering_key=key)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def _index_buffers(conn: asyncpg.Connection, *args: Any) -> dict[str, int]:
    """Buffers each queue index scan of one dequeue touched (run and rolled back)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + DEQUEUE_SQL, *args)
    finally:
        await transaction.rollback()
    touched: dict[str, int] = {}
    for node in _nodes(json.loads(text)[0]["Plan"]):
        index = node.get("Index Name", "")
        if index.startswith("queue_messages_"):
            buffers = node["Shared Hit Blocks"] + node["Shared Read Blocks"]
            touched[index] = max(touched.get(index, 0), buffers)
    return touched


async def test_the_dequeue_never_reads_the_parked_messages_of_a_busy_key(
    postgres_store: PostgresEventStore, conn: asyncpg.Connection
) -> None:
    name = unique_name("busy-key")
    for _ in range(40):
        await postgres_store.enqueue(name, [_event("busy") for _ in range(100)])
    (head,) = await postgres_store.dequeue(name, "a", timedelta(minutes=5), 10)
    assert head.event.offset == 0
    touched = await _index_buffers(conn, name, "b", None, 10, EXPIRED_REASON, 1 << 20, None, 0)
    assert touched, "the dequeue reads the partial indexes"
    assert max(touched.values()) <= INDEX_SCAN_BUFFERS, touched


async def test_the_dequeue_starts_at_its_low_water_mark(
    postgres_store: PostgresEventStore, conn: asyncpg.Connection
) -> None:
    name = unique_name("churned")
    for _ in range(50):
        await postgres_store.enqueue(name, [_event() for _ in range(100)])
    while leased := await postgres_store.dequeue(name, "a", timedelta(minutes=5), 100):
        await postgres_store.acknowledge(name, "a", [m.event.event_id for m in leased])
    (fresh,) = (await postgres_store.enqueue(name, [_event()])).event_ids
    stream_id, mark = postgres_store.ready_marks.get(name)
    assert mark >= 5000, "the mark moved past every message leased"
    touched = await _index_buffers(
        conn, name, "b", None, 10, EXPIRED_REASON, 1 << 20, stream_id, mark
    )
    assert touched["queue_messages_ready_idx"] <= INDEX_SCAN_BUFFERS, touched
    (message,) = await postgres_store.dequeue(name, "b", timedelta(minutes=5), 10)
    assert message.event.event_id == fresh


async def test_the_sql_retry_delay_follows_the_shared_rule(conn: asyncpg.Connection) -> None:
    config = StreamConfiguration(
        retry_initial_delay=timedelta(seconds=0.5),
        retry_max_delay=timedelta(minutes=10),
        retry_multiplier=3.0,
    )
    for attempt in (1, 2, 3, 5, 8, 1000):
        low = retry_delay(config, attempt, 0.0)
        high = retry_delay(config, attempt, 1.0)
        for _ in range(5):
            delay = await conn.fetchval(
                "SELECT event_streaming.retry_delay($1, $2, $3, $4)",
                config.retry_initial_delay,
                config.retry_max_delay,
                config.retry_multiplier,
                attempt,
            )
            slack = timedelta(microseconds=2)
            assert low - slack <= delay <= high + slack, (attempt, low, delay, high)
    none = await conn.fetchval(
        "SELECT event_streaming.retry_delay(interval '0', interval '0', 2, 7)"
    )
    assert none == timedelta(0)


async def test_retention_forgets_remembered_ids_in_batches(
    postgres_store: PostgresEventStore, conn: asyncpg.Connection
) -> None:
    name = unique_name("forgotten")
    await postgres_store.configure_stream(
        name,
        StreamConfiguration(StreamType.EPHEMERAL, deduplication_window=timedelta(seconds=0.1)),
    )
    count = FORGET_BATCH_SIZE + 500
    for start in range(0, count, 1000):
        await postgres_store.enqueue(name, [_event() for _ in range(min(1000, count - start))])
    stream_id = await conn.fetchval(
        "SELECT stream_id FROM event_streaming.streams WHERE stream_name = $1", name
    )
    remembered = "SELECT count(*) FROM event_streaming.queue_remembered_ids WHERE stream_id = $1"
    assert await conn.fetchval(remembered, stream_id) == count
    await conn.execute("SELECT pg_sleep(0.2)")
    report = await postgres_store.enforce_retention()
    assert report.ids_forgotten >= count
    assert await conn.fetchval(remembered, stream_id) == 0


# -- upgrading a database with queues in use ------------------------------------------

_OLD_ENQUEUE = (
    "SELECT * FROM event_streaming.enqueue_messages($1, ARRAY[$2::uuid], ARRAY['T'], "
    "ARRAY['application/json'], ARRAY['{}'::jsonb], ARRAY[NULL::bytea], ARRAY['{}'::jsonb], "
    "ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[2])"
)
# What a 004 dequeue, and a 004 nack with a delay, left in a row.
_OLD_LEASE = (
    "UPDATE event_streaming.queue_messages SET visible_at = now() + $2::interval, "
    "consumer_id = $3, delivery_attempts = delivery_attempts + 1 WHERE event_id = $1"
)
_OLD_NACK = (
    "UPDATE event_streaming.queue_messages SET visible_at = now() + $2::interval, "
    "consumer_id = NULL WHERE event_id = $1"
)


@pytest_asyncio.fixture
async def old_database() -> AsyncIterator[str]:
    """A new database migrated up to (not including) 006."""
    name = await create_database()
    conn = await asyncpg.connect(dsn_for(name))
    try:
        await conn.execute(BOOTSTRAP_SQL)
        for migration in load_migrations():
            if migration.version >= 6:
                break
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    INSERT_APPLIED_SQL, migration.version, migration.name, migration.checksum
                )
    finally:
        await conn.close()
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


async def test_migration_006_keeps_what_a_queue_held(old_database: str) -> None:
    held, waiting, nacked, expired = (uuid.uuid4() for _ in range(4))
    conn = await asyncpg.connect(old_database)
    try:
        for event_id in (held, waiting, nacked, expired):
            await conn.execute(_OLD_ENQUEUE, "q", event_id)
        await conn.execute(_OLD_LEASE, held, timedelta(minutes=5), "a")
        await conn.execute(_OLD_LEASE, nacked, timedelta(minutes=5), "a")
        await conn.execute(_OLD_NACK, nacked, timedelta(minutes=5))
        await conn.execute(_OLD_LEASE, expired, timedelta(seconds=-1), "a")
    finally:
        await conn.close()
    store = PostgresEventStore(old_database)
    await store.start()  # applies 006
    try:
        meta = await store.get_stream_metadata("q")
        assert (meta.pending_count, meta.in_flight_count) == (3, 1)
        leased = await store.dequeue("q", "b", timedelta(minutes=1), 10)
        # The old lease that ran out and the one never delivered; not the nacked
        # one (delayed) nor the held one.
        assert [(m.event.event_id, m.delivery_attempt) for m in leased] == [
            (waiting, 1),
            (expired, 2),
        ]
        assert (await store.acknowledge("q", "a", [held])).acknowledged == (held,)
    finally:
        await store.close()


async def test_keyed_enqueues_and_acks_of_many_keys_at_once_never_deadlock(
    postgres_store: PostgresEventStore,
) -> None:
    """Enqueues take their keys' locks while acks of many keys at once release
    theirs; neither may wait for the other in a cycle (PostgreSQL would fail one
    of them as a deadlock)."""
    name = unique_name("many-keys")
    batches, keys = 40, 500

    async def produce(worker: int) -> None:
        for n in range(worker, batches, 4):
            await postgres_store.enqueue(
                name, [_event(f"k{(n * 100 + i) % keys}") for i in range(100)]
            )

    acked = 0

    async def consume(worker: int) -> None:
        nonlocal acked
        while acked < batches * 100:
            leased = await postgres_store.dequeue(name, f"c{worker}", timedelta(minutes=5), 100)
            if not leased:
                await asyncio.sleep(0.005)
                continue
            result = await postgres_store.acknowledge(
                name, f"c{worker}", [m.receipt for m in leased]
            )
            assert not result.failed
            acked += len(result.acknowledged)

    await asyncio.wait_for(
        asyncio.gather(*(produce(w) for w in range(4)), *(consume(w) for w in range(4))),
        timeout=120,
    )
    meta = await postgres_store.get_stream_metadata(name)
    assert (meta.retained_count, meta.length) == (0, batches * 100)


async def test_retention_vacuums_a_queue_table_full_of_dead_rows(
    postgres_store: PostgresEventStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether or not autovacuum runs on this server (it may be off), the
    retention pass vacuums queue tables past their dead-row threshold."""
    monkeypatch.setattr(postgres_store, "vacuum_dead_rows", 500)
    name = unique_name("churn")
    for _ in range(10):
        await postgres_store.enqueue(name, [_event() for _ in range(100)])
    while leased := await postgres_store.dequeue(name, "a", timedelta(minutes=5), 100):
        await postgres_store.acknowledge(name, "a", [m.receipt for m in leased])
    stats = (
        "SELECT n_dead_tup, coalesce(vacuum_count, 0) + coalesce(autovacuum_count, 0) AS runs "
        "FROM pg_stat_user_tables WHERE relid = 'event_streaming.queue_messages'::regclass"
    )

    async def dead_rows_counted() -> bool:
        row = await conn.fetchrow(stats)
        return row is not None and row["n_dead_tup"] >= 500

    await wait_until(dead_rows_counted)
    before = (await conn.fetchrow(stats))["runs"]
    await postgres_store.enforce_retention()

    async def vacuumed() -> bool:
        row = await conn.fetchrow(stats)
        return row is not None and row["runs"] > before

    await wait_until(vacuumed)

"""PostgreSQL store lifecycle: start and close leave nothing running."""

from __future__ import annotations

import asyncio
import uuid

from storage.postgres import PostgresEventStore
from storage.records import NewEvent
from tests.support import unique_name


async def test_store_closes_promptly_right_after_a_write(pg_dsn: str) -> None:
    # A close that races the notifier's wake-up once lost its cancel and hung.
    for _ in range(10):
        store = PostgresEventStore(pg_dsn)
        await store.start()
        await store.append_to_stream(unique_name(), [NewEvent(uuid.uuid4(), "T", b"{}")])
        await asyncio.wait_for(store.close(), timeout=10)


async def test_session_settings_hold_on_every_pooled_connection(pg_dsn: str) -> None:
    store = PostgresEventStore(pg_dsn, pool_min_size=1, pool_max_size=2)
    await store.start()
    try:
        for _ in range(5):  # reused connections, after the pool's reset on release
            assert await store.db.fetchval("SHOW jit") == "off"
            assert await store.db.fetchval("SHOW timezone") == "UTC"
    finally:
        await store.close()

"""PostgreSQL's reads of the global log cost what they return, not what the log holds:
the rows a filtered read examines, taken from its plan (EXPLAIN ANALYZE of the very
statement the store runs), on a database of the test's own."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from storage.postgres import PostgresEventStore
from storage.postgres.log import READ_ALL_SQL
from storage.records import AllFilter, NewEvent, StreamAppend
from storage.rules import ALL_SCAN_WINDOW, MAX_PROBED_STREAMS
from tests.support import create_database, drop_database, dsn_for

pytestmark = pytest.mark.usefixtures("pg_dsn")  # skipped, with the reason, without PostgreSQL

PREFIX = "many-"
#: A few long streams, one event of a rare type at the end of each.
FEW = "few-"
FEW_STREAMS = 5
LONG_STREAM = 2_000
STREAMS = MAX_PROBED_STREAMS + 100
EVENTS_PER_STREAM = 100
PAGE_BYTES = 3 << 20


@pytest_asyncio.fixture(scope="module")
async def many_streams() -> AsyncIterator[str]:
    """A log of 30,000 events in 300 streams under one prefix (more streams than the
    read probes one by one, more events than its window), then a few long streams
    under another, each ending with one event of a rare type."""
    name = await create_database()
    store = PostgresEventStore(dsn_for(name))
    await store.start()
    try:
        for first in range(0, STREAMS, 100):
            await store.append_to_streams(
                [
                    StreamAppend(
                        f"{PREFIX}{k}",
                        [NewEvent(uuid.uuid4(), "Common", b"{}") for _ in range(EVENTS_PER_STREAM)],
                    )
                    for k in range(first, first + 100)
                ]
            )
        page = await store.read_all(
            1, 100, AllFilter(stream_prefixes=(PREFIX,), event_types=frozenset({"Absent"}))
        )
        # Nothing matches: the read looked at one window of the log and goes on after it.
        assert page.events == ()
        assert page.next_position == 1 + ALL_SCAN_WINDOW
        for k in range(FEW_STREAMS):
            common = [NewEvent(uuid.uuid4(), "Common", b"{}") for _ in range(LONG_STREAM)]
            rare = NewEvent(uuid.uuid4(), "Rare", b"{}")
            await store.append_to_streams([StreamAppend(f"{FEW}{k}", [*common, rare])])
        # Statistics as autovacuum would gather them (where it runs), so that the plans
        # are those of a database that knows its tables.
        connection = await asyncpg.connect(dsn_for(name))
        try:
            await connection.execute("ANALYZE")
        finally:
            await connection.close()
        yield dsn_for(name)
    finally:
        await store.close()
        await drop_database(name)


def _examined(plan: Any) -> int:
    """Rows of event_streaming.events that the plan's nodes read (kept or filtered)."""
    total = 0
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") == "events":
            loops = node.get("Actual Loops", 1)
            total += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * loops
        nodes.extend(node.get("Plans", []))
    return total


async def examined_rows(dsn: str, sql: str, *args: object, generic: bool = False) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        if generic:
            await connection.execute("SET plan_cache_mode = force_generic_plan")
        text = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    finally:
        await connection.close()
    return _examined(json.loads(text)[0]["Plan"])


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
async def test_a_prefix_of_many_streams_reads_at_most_one_window_of_the_log(
    many_streams: str, backward: bool, generic: bool
) -> None:
    start = (STREAMS * EVENTS_PER_STREAM) if backward else 1
    for types in (["Absent"], None):
        examined = await examined_rows(
            many_streams,
            READ_ALL_SQL["window", backward],
            start,
            100,
            PAGE_BYTES,
            types,
            [PREFIX],
            generic=generic,
        )
        # The window, and the oldest position a backward read looks up.
        assert examined <= ALL_SCAN_WINDOW + 1, (types, examined)


@pytest.mark.parametrize("event_type", ["Rare", "Common"])
@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
async def test_a_prefix_of_few_streams_with_a_type_reads_no_more_than_a_page_per_stream(
    many_streams: str, backward: bool, generic: bool, event_type: str
) -> None:
    """Few long streams, one type: each stream gives at most a page of that type's
    events in order, neither walking its events of other types (a rare type) nor
    sorting all its events of the type (a common one)."""
    store = PostgresEventStore(many_streams)
    await store.start()
    try:
        wanted = AllFilter(stream_prefixes=(FEW,), event_types=frozenset({event_type}))
        page = await store.read_all(0 if backward else 1, 100, wanted, backward=backward)
        assert {e.event_type for e in page.events} == {event_type}
        assert len(page.events) == (FEW_STREAMS if event_type == "Rare" else 100)
        start = page.events[0].global_position if backward else 1
    finally:
        await store.close()
    examined = await examined_rows(
        many_streams,
        READ_ALL_SQL["streams-types", backward],
        start,
        100,
        PAGE_BYTES,
        [event_type],
        [FEW],
        generic=generic,
    )
    # Per stream: its first event from the start, then at most a page of the type.
    per_stream = 1 + (1 if event_type == "Rare" else 100)
    assert examined <= FEW_STREAMS * per_stream + 1, examined

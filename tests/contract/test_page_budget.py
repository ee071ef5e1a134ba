"""Every response that carries events stops at the store's byte budget
(``page_bytes``), always with at least one event, and the next page goes on where
it stopped: reads (plain and filtered), dequeues and dead-letter listings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage.interface import EventStore
from storage.records import NewEvent, ReadFilter
from tests.contract.events import new_event
from tests.contract.leases import LONG_LEASE, configure_queue, enqueue
from tests.contract.paging import all_dead_letters, read_to_end

BUDGET = 10_000
#: Events of this many bytes: three fit the budget, a fourth does not.
SIZE = 3_000
OPAQUE = "application/octet-stream"


@pytest.fixture
def small_pages(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> EventStore:
    monkeypatch.setattr(store, "page_bytes", BUDGET)
    return store


def sized(n: int, size: int = SIZE, event_type: str = "Sized") -> list[NewEvent]:
    return [
        new_event(event_type, data=bytes([i % 256]) * size, content_type=OPAQUE) for i in range(n)
    ]


async def test_a_read_stops_at_the_byte_budget_and_goes_on_from_there(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    await store.append_to_stream(stream_name, sized(10))
    page = await store.read_stream(stream_name, 0, 100)
    assert [e.offset for e in page.events] == [0, 1, 2]
    assert (page.next_offset, page.end_of_stream) == (3, False)
    everything = await read_to_end(store, stream_name, page_size=100)
    assert [e.offset for e in everything] == list(range(10))
    assert all(len(e.data) == SIZE for e in everything)


async def test_an_event_larger_than_the_budget_travels_alone(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    await store.append_to_stream(stream_name, sized(3, size=BUDGET * 3))
    page = await store.read_stream(stream_name, 0, 100)
    assert [e.offset for e in page.events] == [0]
    assert len(page.events[0].data) == BUDGET * 3
    assert (page.next_offset, page.end_of_stream) == (1, False)


async def test_metadata_counts_towards_the_budget(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    heavy = [
        new_event("Heavy", data=b"x", content_type=OPAQUE, metadata={"pad": "m" * SIZE})
        for _ in range(5)
    ]
    await store.append_to_stream(stream_name, heavy)
    page = await store.read_stream(stream_name, 0, 100)
    assert len(page.events) == 3


async def test_a_filtered_read_stops_at_the_byte_budget(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    for _ in range(4):
        await store.append_to_stream(stream_name, sized(1, event_type="Wanted"))
        await store.append_to_stream(stream_name, sized(1, event_type="Other"))
    wanted = ReadFilter(event_types=frozenset({"Wanted"}))
    page = await store.read_stream(stream_name, 0, 100, wanted)
    assert [e.offset for e in page.events] == [0, 2, 4]
    assert not page.end_of_stream
    rest = await read_to_end(store, stream_name, from_offset=page.next_offset, read_filter=wanted)
    assert [e.offset for e in rest] == [6]


async def test_a_dequeue_stops_at_the_byte_budget(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    ids = await enqueue(store, stream_name, sized(8))
    first = await store.dequeue(stream_name, "a", LONG_LEASE, 100)
    assert [m.event.event_id for m in first] == list(ids[:3])
    second = await store.dequeue(stream_name, "b", LONG_LEASE, 100)
    assert [m.event.event_id for m in second] == list(ids[3:6])


async def test_a_dead_letter_page_stops_at_the_byte_budget(
    small_pages: EventStore, stream_name: str
) -> None:
    store = small_pages
    await configure_queue(store, stream_name, max_attempts=1)
    ids = await enqueue(store, stream_name, sized(5, size=BUDGET // 2))
    for _ in range(len(ids)):
        (message,) = await store.dequeue(stream_name, "a", LONG_LEASE, 1)
        await store.nack(stream_name, "a", message.event.event_id, timedelta(0), "bad")
    page = await store.list_dead_letters(stream_name, 100, "")
    assert [d.event.event_id for d in page.dead_letters] == list(ids[:2])
    assert page.next_page_token
    letters = await all_dead_letters(store, stream_name, page_size=100)
    assert [d.event.event_id for d in letters] == list(ids)

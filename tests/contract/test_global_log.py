"""The global log ($all) at the port, on every backend: dense positions in commit
order, one call's events together, reads forward and backward with filters and
byte budgets, consumer groups on $all, and what deletion and retention leave."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from storage.errors import ConsumerOffsetNotFound, OffsetOutOfRange
from storage.interface import EventStore
from storage.records import (
    ALL_STREAM,
    AllFilter,
    RecordedEvent,
    StreamAppend,
    StreamConfiguration,
    StreamType,
)
from tests.contract.events import new_event, new_events

#: Big enough to hold what any test here writes, after whatever other tests wrote.
WHOLE = 1000


async def all_of(
    store: EventStore, read_filter: AllFilter, *, backward: bool = False, page: int = 1000
) -> list[RecordedEvent]:
    """Every event of the global log the filter lets through, paging to the end."""
    found: list[RecordedEvent] = []
    position = 0
    for _ in range(10_000):
        result = await store.read_all(position, page, read_filter, backward=backward)
        found.extend(result.events)
        if result.end_of_log:
            return found
        assert result.next_position != position or result.events, "no progress"
        position = result.next_position
    raise AssertionError("paging did not reach the end of the log")


def mine(prefix: str) -> AllFilter:
    return AllFilter(stream_prefixes=(prefix,))


async def test_positions_are_dense_and_follow_appends(store: EventStore, stream_name: str) -> None:
    first = await store.append_to_stream(f"{stream_name}-a", new_events(2))
    second = await store.append_to_stream(f"{stream_name}-b", new_events(3))
    assert first.last_global_position - first.first_global_position == 1
    assert second.first_global_position > first.last_global_position
    assert second.last_global_position - second.first_global_position == 2
    events = await all_of(store, mine(f"{stream_name}-"))
    assert [e.global_position for e in events] == [
        *range(first.first_global_position, first.last_global_position + 1),
        *range(second.first_global_position, second.last_global_position + 1),
    ]
    assert [(e.stream_name, e.offset) for e in events] == [
        (f"{stream_name}-a", 0),
        (f"{stream_name}-a", 1),
        (f"{stream_name}-b", 0),
        (f"{stream_name}-b", 1),
        (f"{stream_name}-b", 2),
    ]


async def test_a_stream_read_carries_the_global_positions(
    store: EventStore, stream_name: str
) -> None:
    appended = await store.append_to_stream(stream_name, new_events(3))
    page = await store.read_stream(stream_name, 0, 10)
    assert [e.global_position for e in page.events] == list(
        range(appended.first_global_position, appended.last_global_position + 1)
    )


async def test_concurrent_appends_take_dense_positions_in_one_order(
    store: EventStore, stream_name: str
) -> None:
    results = await asyncio.gather(
        *(
            store.append_to_stream(f"{stream_name}-{i % 4}", new_events(1 + i % 3))
            for i in range(24)
        )
    )
    taken = sorted(
        p for r in results for p in range(r.first_global_position, r.last_global_position + 1)
    )
    assert taken == list(range(taken[0], taken[0] + len(taken)))
    events = await all_of(store, mine(f"{stream_name}-"))
    assert [e.global_position for e in events] == taken
    # Within a stream, global order follows offsets.
    for i in range(4):
        offsets = [e.offset for e in events if e.stream_name == f"{stream_name}-{i}"]
        assert offsets == sorted(offsets)


async def test_one_call_of_several_streams_takes_consecutive_positions_in_order(
    store: EventStore, stream_name: str
) -> None:
    appends = [
        StreamAppend(f"{stream_name}-z", new_events(2)),
        StreamAppend(f"{stream_name}-a", new_events(1)),
        StreamAppend(f"{stream_name}-m", new_events(3)),
    ]
    results = await store.append_to_streams(appends)
    assert [(r.first_offset, r.last_offset) for r in results] == [(0, 1), (0, 0), (0, 2)]
    positions = [(r.first_global_position, r.last_global_position) for r in results]
    base = positions[0][0]
    assert positions == [(base, base + 1), (base + 2, base + 2), (base + 3, base + 5)]
    events = await all_of(store, mine(f"{stream_name}-"))
    assert [e.stream_name.rsplit("-", 1)[1] for e in events] == ["z", "z", "a", "m", "m", "m"]


async def test_reads_filter_by_event_type_and_prefix(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(f"{stream_name}-x", [new_event("A"), new_event("B")])
    await store.append_to_stream(f"{stream_name}-y", [new_event("B"), new_event("C")])
    await store.append_to_stream(f"{stream_name}z-other", [new_event("B")])
    by_type = await all_of(
        store, AllFilter(stream_prefixes=(f"{stream_name}",), event_types=frozenset({"B"}))
    )
    assert [e.stream_name for e in by_type] == [
        f"{stream_name}-x",
        f"{stream_name}-y",
        f"{stream_name}z-other",
    ]
    two_prefixes = await all_of(
        store, AllFilter(stream_prefixes=(f"{stream_name}-x", f"{stream_name}z"))
    )
    assert [(e.stream_name[-1], e.event_type) for e in two_prefixes] == [
        ("x", "A"),
        ("x", "B"),
        ("r", "B"),
    ]
    types_only = await store.read_all(0, WHOLE, AllFilter(event_types=frozenset({"C"})))
    assert f"{stream_name}-y" in {e.stream_name for e in types_only.events}
    assert {e.event_type for e in types_only.events} == {"C"}


async def test_backward_reads_go_newest_first_and_stop_at_the_start(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(f"{stream_name}-b", new_events(5))
    newest = await store.read_all(0, 2, mine(f"{stream_name}-"), backward=True)
    assert [e.offset for e in newest.events] == [4, 3]
    assert not newest.end_of_log
    assert newest.next_position == newest.events[-1].global_position - 1
    everything = await all_of(store, mine(f"{stream_name}-"), backward=True, page=2)
    assert [e.offset for e in everything] == [4, 3, 2, 1, 0]


async def test_backward_from_a_position_starts_at_or_below_it(
    store: EventStore, stream_name: str
) -> None:
    result = await store.append_to_stream(f"{stream_name}-b", new_events(4))
    middle = result.first_global_position + 1
    page = await store.read_all(middle, 10, mine(f"{stream_name}-"), backward=True)
    assert [e.global_position for e in page.events] == [middle, middle - 1]
    assert (page.next_position, page.end_of_log) == (0, True)


async def test_forward_paging_goes_on_where_the_page_stopped(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(f"{stream_name}-p", new_events(7))
    first = await store.read_all(0, 3, mine(f"{stream_name}-"))
    assert [e.offset for e in first.events] == [0, 1, 2]
    assert first.next_position == first.events[-1].global_position + 1
    assert [e.offset for e in await all_of(store, mine(f"{stream_name}-"), page=3)] == list(
        range(7)
    )


async def test_reading_past_the_end_is_empty_and_the_end(store: EventStore) -> None:
    far = 2**62
    page = await store.read_all(far, 10)
    assert (page.events, page.next_position, page.end_of_log) == ((), far, True)


async def test_a_page_of_the_global_log_stops_at_the_byte_budget(
    store: EventStore, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "page_bytes", 10_000)
    big = [new_event(data=b"x" * 3000, content_type="application/octet-stream") for _ in range(5)]
    await store.append_to_stream(f"{stream_name}-big", big)
    page = await store.read_all(0, 100, mine(f"{stream_name}-"))
    assert len(page.events) == 3
    assert page.next_position == page.events[-1].global_position + 1
    assert not page.end_of_log
    backward = await store.read_all(0, 100, mine(f"{stream_name}-"), backward=True)
    assert [e.offset for e in backward.events] == [4, 3, 2]


async def test_a_backward_stream_read_starts_at_the_last_event(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(5))
    last = await store.read_stream(stream_name, -1, 1, backward=True)
    assert [e.offset for e in last.events] == [4]
    assert (last.next_offset, last.end_of_stream) == (3, False)
    rest = await store.read_stream(stream_name, 3, 10, backward=True)
    assert [e.offset for e in rest.events] == [3, 2, 1, 0]
    assert (rest.next_offset, rest.end_of_stream) == (-1, True)
    beyond = await store.read_stream(stream_name, 100, 2, backward=True)
    assert [e.offset for e in beyond.events] == [4, 3]


async def test_a_deleted_stream_leaves_the_global_log_and_positions_are_kept(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(f"{stream_name}-a", new_events(2))
    await store.append_to_stream(f"{stream_name}-b", new_events(2))
    before = await all_of(store, mine(f"{stream_name}-"))
    await store.delete_stream(f"{stream_name}-a")
    after = await all_of(store, mine(f"{stream_name}-"))
    assert after == [e for e in before if e.stream_name == f"{stream_name}-b"]
    again = await store.append_to_stream(f"{stream_name}-a", new_events(1))
    assert again.first_global_position > before[-1].global_position


async def test_retention_removes_events_from_the_global_log_never_renumbering(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(5))
    before = await all_of(store, mine(stream_name))
    await store.configure_stream(
        stream_name, StreamConfiguration(stream_type=StreamType.PERSISTENT, retention_max_count=2)
    )
    await store.enforce_retention()
    after = await all_of(store, mine(stream_name))
    assert after == before[-2:]


async def test_consumer_groups_commit_positions_on_the_global_log(
    store: EventStore, stream_name: str
) -> None:
    group = f"{stream_name}-group"
    with pytest.raises(ConsumerOffsetNotFound):
        await store.get_consumer_offset(ALL_STREAM, group)
    appended = await store.append_to_stream(stream_name, new_events(2))
    await store.commit_offset(ALL_STREAM, group, appended.last_global_position)
    assert await store.get_consumer_offset(ALL_STREAM, group) == appended.last_global_position
    with pytest.raises(OffsetOutOfRange) as caught:
        await store.commit_offset(ALL_STREAM, group, 2**62)
    assert caught.value.newest >= appended.last_global_position
    assert await store.get_consumer_offset(ALL_STREAM, group) == appended.last_global_position


async def test_queues_are_not_in_the_global_log(store: EventStore, stream_name: str) -> None:
    await store.enqueue(f"{stream_name}-q", new_events(2))
    assert await all_of(store, mine(f"{stream_name}-")) == []
    (message,) = await store.dequeue(f"{stream_name}-q", "c", timedelta(seconds=30), 1)
    assert message.event.global_position == 0

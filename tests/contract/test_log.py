"""Persistent streams: appends, reads, expectations, idempotent retries, metadata."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from storage.errors import DuplicateEvent, StreamNotFound, WrongExpectedOffset, WrongStreamType
from storage.interface import EventStore
from storage.records import (
    AllFilter,
    NewEvent,
    ReadFilter,
    StreamConfiguration,
    StreamType,
)
from tests.contract.backends import StoreCall
from tests.contract.events import (
    appended_offsets,
    assert_recorded_as_written,
    ids_of,
    new_event,
    new_events,
    offsets_of,
    with_ids,
)
from tests.contract.paging import read_to_end

# -- appends -------------------------------------------------------------------------


async def test_appends_take_contiguous_offsets_from_zero(
    store: EventStore, stream_name: str
) -> None:
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(3))) == (0, 2)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (3, 3)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(4))) == (4, 7)
    assert offsets_of(await read_to_end(store, stream_name)) == list(range(8))


async def test_a_batch_keeps_its_order(store: EventStore, stream_name: str) -> None:
    batch = new_events(5)
    await store.append_to_stream(stream_name, batch)
    assert ids_of(await read_to_end(store, stream_name)) == ids_of(batch)


async def test_every_field_round_trips(store: EventStore, stream_name: str) -> None:
    written = [
        new_event(
            "Json",
            {"text": "héllo ✓ 😀", "nested": {"list": [1, 2.5, None, True]}, "empty": {}},
            metadata={"tenant": "t-1", "ключ": "значение", "empty": ""},
            correlation_id="corr-1",
            causation_id="cause-1",
        ),
        new_event(
            "Binary",
            data=bytes(range(256)) + b"\x00\xff",
            content_type="application/octet-stream",
        ),
        new_event("Text", data=b"not json {", content_type="text/plain; charset=utf-8"),
        new_event("EmptyBytes", data=b"", content_type="application/octet-stream"),
        new_event("JsonScalar", "just a string"),
        new_event("JsonArray", [1, "two", [3]]),
    ]
    await store.append_to_stream(stream_name, written)
    recorded = await read_to_end(store, stream_name)
    assert len(recorded) == len(written)
    for offset, (got, sent) in enumerate(zip(recorded, written, strict=True)):
        assert_recorded_as_written(got, sent, stream_name=stream_name, offset=offset)


async def test_non_json_payloads_come_back_byte_for_byte(
    store: EventStore, stream_name: str
) -> None:
    # JSON-looking text stored under another content type is not reformatted.
    raw = b'{ "b" : 1,   "a" : 2 }\n'
    await store.append_to_stream(
        stream_name, [new_event(data=raw, content_type="application/vnd.custom+json")]
    )
    (got,) = await read_to_end(store, stream_name)
    assert got.data == raw
    assert got.content_type == "application/vnd.custom+json"


async def test_timestamps_are_set_at_append_and_never_decrease_with_offsets(
    store: EventStore, stream_name: str
) -> None:
    before = datetime.now(UTC)
    for size in (1, 3, 2):
        await store.append_to_stream(stream_name, new_events(size))
        await asyncio.sleep(0.01)
    after = datetime.now(UTC)
    stamps = [e.timestamp for e in await read_to_end(store, stream_name)]
    assert stamps == sorted(stamps)
    slack = timedelta(seconds=5)  # the database's clock, read on this machine
    assert all(before - slack <= stamp <= after + slack for stamp in stamps)
    assert stamps[0] < stamps[-1]


# -- reads ---------------------------------------------------------------------------


async def test_read_from_any_offset_starts_there(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(6))
    for start in range(6):
        page = await store.read_stream(stream_name, start, 100)
        assert offsets_of(page.events) == list(range(start, 6))
        assert page.end_of_stream
        assert page.next_offset == 6


async def test_reads_page_with_next_offset_until_the_end(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(7))
    first = await store.read_stream(stream_name, 0, 3)
    assert (offsets_of(first.events), first.next_offset, first.end_of_stream) == (
        [0, 1, 2],
        3,
        False,
    )
    second = await store.read_stream(stream_name, first.next_offset, 3)
    assert (offsets_of(second.events), second.next_offset, second.end_of_stream) == (
        [3, 4, 5],
        6,
        False,
    )
    last = await store.read_stream(stream_name, second.next_offset, 3)
    assert (offsets_of(last.events), last.next_offset, last.end_of_stream) == ([6], 7, True)


async def test_a_page_that_ends_exactly_at_the_end_is_the_end(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(4))
    page = await store.read_stream(stream_name, 0, 4)
    assert (offsets_of(page.events), page.next_offset, page.end_of_stream) == (
        [0, 1, 2, 3],
        4,
        True,
    )


async def test_reading_at_or_past_the_end_finds_nothing_and_is_the_end(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    for start in (3, 4, 1000):
        page = await store.read_stream(stream_name, start, 10)
        assert page.events == ()
        assert page.end_of_stream
        assert page.next_offset >= 3


async def test_a_read_continues_where_a_later_append_went_on(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    end = await store.read_stream(stream_name, 0, 10)
    await store.append_to_stream(stream_name, new_events(2))
    more = await store.read_stream(stream_name, end.next_offset, 10)
    assert offsets_of(more.events) == [2, 3]


async def test_an_empty_configured_log_reads_as_empty(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.PERSISTENT))
    page = await store.read_stream(stream_name, 0, 10)
    assert (page.events, page.next_offset, page.end_of_stream) == ((), 0, True)
    assert await store.get_stream_length(stream_name) == 0


# -- read filters --------------------------------------------------------------------


async def test_event_type_filter_keeps_only_those_types(
    store: EventStore, stream_name: str
) -> None:
    types = ["A", "B", "A", "C", "B", "C", "A"]
    await store.append_to_stream(stream_name, [new_event(t) for t in types])
    wanted = ReadFilter(event_types=frozenset({"A", "C"}))
    page = await store.read_stream(stream_name, 0, 100, wanted)
    assert offsets_of(page.events) == [0, 2, 3, 5, 6]
    assert page.end_of_stream
    # Pages count matching events, and paging finds every match once.
    paged = await read_to_end(store, stream_name, page_size=2, read_filter=wanted)
    assert offsets_of(paged) == [0, 2, 3, 5, 6]
    from_three = await read_to_end(store, stream_name, from_offset=3, read_filter=wanted)
    assert offsets_of(from_three) == [3, 5, 6]


async def test_event_type_filter_with_no_match_reads_to_the_end(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    page = await store.read_stream(stream_name, 0, 10, ReadFilter(event_types=frozenset({"X"})))
    assert page.events == ()
    assert page.end_of_stream
    assert page.next_offset == 3


async def test_from_timestamp_filter_keeps_events_stored_at_or_after_it(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    await asyncio.sleep(0.02)
    await store.append_to_stream(stream_name, new_events(2))
    events = await read_to_end(store, stream_name)
    since = events[3].timestamp
    assert events[2].timestamp < since
    later = await read_to_end(store, stream_name, read_filter=ReadFilter(from_timestamp=since))
    assert offsets_of(later) == [3, 4]
    everything = ReadFilter(from_timestamp=events[0].timestamp - timedelta(days=1))
    assert offsets_of(await read_to_end(store, stream_name, read_filter=everything)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    future = ReadFilter(from_timestamp=datetime.now(UTC) + timedelta(days=1))
    assert await read_to_end(store, stream_name, read_filter=future) == []


async def test_filters_combine(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, [new_event("A"), new_event("B")])
    await asyncio.sleep(0.02)
    await store.append_to_stream(stream_name, [new_event("A"), new_event("B")])
    since = (await store.read_stream(stream_name, 2, 1)).events[0].timestamp
    both = ReadFilter(from_timestamp=since, event_types=frozenset({"B"}))
    assert offsets_of(await read_to_end(store, stream_name, read_filter=both)) == [3]


# -- expectations --------------------------------------------------------------------


async def test_no_expectation_appends_whatever_the_stream_holds(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(2), None)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1), None)) == (
        2,
        2,
    )


async def test_expecting_minus_one_appends_only_to_a_stream_without_events(
    store: EventStore, stream_name: str
) -> None:
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(2), -1)) == (0, 1)
    with pytest.raises(WrongExpectedOffset) as caught:
        await store.append_to_stream(stream_name, new_events(1), -1)
    assert (caught.value.expected, caught.value.actual) == (-1, 1)
    assert caught.value.stream_name == stream_name


async def test_expecting_minus_one_appends_to_an_empty_configured_log(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.PERSISTENT))
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1), -1)) == (0, 0)


async def test_expecting_the_last_offset_appends(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(2), 2)) == (3, 4)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1), 4)) == (5, 5)


@pytest.mark.parametrize("expected", [0, 1, 3, 100])
async def test_a_wrong_expected_offset_is_refused_with_the_actual_one(
    store: EventStore, stream_name: str, expected: int
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    with pytest.raises(WrongExpectedOffset) as caught:
        await store.append_to_stream(stream_name, new_events(1), expected)
    assert (caught.value.expected, caught.value.actual) == (expected, 2)
    assert await store.get_stream_length(stream_name) == 3


async def test_an_expectation_on_an_empty_configured_log_reports_minus_one(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.PERSISTENT))
    with pytest.raises(WrongExpectedOffset) as caught:
        await store.append_to_stream(stream_name, new_events(1), 0)
    assert caught.value.actual == -1


# -- idempotent retries ----------------------------------------------------------------


async def test_an_exact_repeat_writes_nothing_and_returns_the_original_offsets(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    batch = new_events(3)
    original = await store.append_to_stream(stream_name, batch)
    assert appended_offsets(original) == (2, 4)
    assert await store.append_to_stream(stream_name, batch) == original
    assert await store.get_stream_length(stream_name) == 5
    assert ids_of(await read_to_end(store, stream_name, from_offset=2)) == ids_of(batch)


async def test_an_exact_repeat_is_recognised_after_later_appends(
    store: EventStore, stream_name: str
) -> None:
    batch = new_events(2)
    original = await store.append_to_stream(stream_name, batch)
    await store.append_to_stream(stream_name, new_events(3))
    assert await store.append_to_stream(stream_name, batch) == original
    assert await store.get_stream_length(stream_name) == 5


@pytest.mark.parametrize("stale", [-1, 0, 4])
async def test_an_exact_repeat_with_a_stale_expectation_still_succeeds(
    store: EventStore, stream_name: str, stale: int
) -> None:
    await store.append_to_stream(stream_name, new_events(1))
    batch = new_events(2)
    original = await store.append_to_stream(stream_name, batch, 0)
    await store.append_to_stream(stream_name, new_events(2))
    assert await store.append_to_stream(stream_name, batch, stale) == original
    assert await store.get_stream_length(stream_name) == 5


async def test_an_exact_repeat_with_the_current_expectation_still_succeeds(
    store: EventStore, stream_name: str
) -> None:
    batch = new_events(2)
    original = await store.append_to_stream(stream_name, batch)
    assert await store.append_to_stream(stream_name, batch, 1) == original
    assert await store.get_stream_length(stream_name) == 2


async def test_a_batch_repeating_some_ids_is_a_duplicate_and_writes_nothing(
    store: EventStore, stream_name: str
) -> None:
    first = new_events(2)
    await store.append_to_stream(stream_name, first)
    fresh = new_event()
    with pytest.raises(DuplicateEvent) as caught:
        await store.append_to_stream(stream_name, [first[1], fresh])
    assert caught.value.event_id == first[1].event_id
    assert caught.value.stream_name == stream_name
    assert await store.get_stream_length(stream_name) == 2
    assert ids_of(await read_to_end(store, stream_name)) == ids_of(first)


@pytest.mark.parametrize(
    "arrange",
    [
        pytest.param(lambda a, b, new: [b, a], id="reordered"),
        pytest.param(lambda a, b, new: [a, b, new], id="longer"),
        pytest.param(lambda a, b, new: [new, a, b], id="shifted"),
    ],
)
async def test_a_batch_that_is_not_the_same_batch_is_a_duplicate(
    store: EventStore,
    stream_name: str,
    arrange: Callable[[NewEvent, NewEvent, NewEvent], list[NewEvent]],
) -> None:
    """Same ids in the same order, or it is not a repeat."""
    a, b, new = new_event(), new_event(), new_event()
    await store.append_to_stream(stream_name, [a, b])
    batch = arrange(a, b, new)
    with pytest.raises(DuplicateEvent):
        await store.append_to_stream(stream_name, batch)
    assert await store.get_stream_length(stream_name) == 2


async def test_a_refused_partial_repeat_leaves_its_new_ids_unwritten(
    store: EventStore, stream_name: str
) -> None:
    old = new_event()
    await store.append_to_stream(stream_name, [old])
    fresh = with_ids([uuid.uuid4(), uuid.uuid4()])
    with pytest.raises(DuplicateEvent):
        await store.append_to_stream(stream_name, [*fresh, old])
    # Not a repeat of anything: they go in as new events, at the next offsets.
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (1, 1)
    assert appended_offsets(await store.append_to_stream(stream_name, fresh)) == (2, 3)


# -- length, metadata, unknown streams, types ---------------------------------------


async def test_length_counts_every_event_ever_appended(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    assert await store.get_stream_length(stream_name) == 3
    await store.append_to_stream(stream_name, new_events(4))
    assert await store.get_stream_length(stream_name) == 7


async def test_metadata_describes_the_log(store: EventStore, stream_name: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    await store.append_to_stream(stream_name, new_events(2))
    await store.append_to_stream(stream_name, new_events(3))
    events = await read_to_end(store, stream_name)
    meta = await store.get_stream_metadata(stream_name)
    assert meta.stream_name == stream_name
    assert meta.stream_type == StreamType.PERSISTENT
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        5,
        5,
        0,
        4,
    )
    assert meta.oldest_event_timestamp == events[0].timestamp
    assert meta.newest_event_timestamp == events[-1].timestamp
    assert before <= meta.created_at <= events[0].timestamp
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


async def test_metadata_of_an_empty_configured_log(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.PERSISTENT))
    meta = await store.get_stream_metadata(stream_name)
    assert meta.stream_type == StreamType.PERSISTENT
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        0,
        0,
        -1,
        -1,
    )
    assert (meta.oldest_event_timestamp, meta.newest_event_timestamp) == (None, None)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, n: s.read_stream(n, 0, 10), id="read_stream"),
        pytest.param(lambda s, n: s.get_stream_length(n), id="get_stream_length"),
        pytest.param(lambda s, n: s.get_stream_metadata(n), id="get_stream_metadata"),
    ],
)
async def test_an_unknown_stream_is_not_found(
    store: EventStore, stream_name: str, call: StoreCall
) -> None:
    with pytest.raises(StreamNotFound) as caught:
        await call(store, stream_name)
    assert caught.value.stream_name == stream_name


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, n: s.append_to_stream(n, new_events(1)), id="append_to_stream"),
        pytest.param(lambda s, n: s.read_stream(n, 0, 10), id="read_stream"),
        pytest.param(lambda s, n: s.get_stream_length(n), id="get_stream_length"),
    ],
)
async def test_log_calls_on_a_queue_are_the_wrong_type(
    store: EventStore, stream_name: str, call: StoreCall
) -> None:
    await store.enqueue(stream_name, new_events(1))
    with pytest.raises(WrongStreamType) as caught:
        await call(store, stream_name)
    assert (caught.value.actual, caught.value.wanted) == (
        StreamType.EPHEMERAL,
        StreamType.PERSISTENT,
    )
    assert caught.value.stream_name == stream_name


async def test_an_append_to_a_configured_queue_is_the_wrong_type(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.EPHEMERAL))
    with pytest.raises(WrongStreamType):
        await store.append_to_stream(stream_name, new_events(1))


async def test_an_enqueue_on_a_log_is_the_wrong_type(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(1))
    with pytest.raises(WrongStreamType) as caught:
        await store.enqueue(stream_name, new_events(1))
    assert (caught.value.actual, caught.value.wanted) == (
        StreamType.PERSISTENT,
        StreamType.EPHEMERAL,
    )
    assert await store.get_stream_length(stream_name) == 1


async def test_the_first_append_makes_a_stream_persistent(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(1))
    assert (await store.get_stream_metadata(stream_name)).stream_type == StreamType.PERSISTENT
    assert (await store.get_stream_configuration(stream_name)).stream_type == StreamType.PERSISTENT


async def test_ordering_keys_are_stored_and_returned_on_a_log(
    store: EventStore, stream_name: str
) -> None:
    keyed = [new_event(ordering_key="customer-42"), new_event(), new_event(ordering_key="c-7")]
    written = await store.append_to_stream(stream_name, keyed)
    page = await store.read_stream(stream_name, 0, 10)
    assert [e.ordering_key for e in page.events] == ["customer-42", "", "c-7"]
    backward = await store.read_stream(stream_name, -1, 10, backward=True)
    assert [e.ordering_key for e in backward.events] == ["c-7", "", "customer-42"]
    log = await store.read_all(
        written.first_global_position, 10, AllFilter(stream_prefixes=(stream_name,))
    )
    assert [e.ordering_key for e in log.events] == ["customer-42", "", "c-7"]

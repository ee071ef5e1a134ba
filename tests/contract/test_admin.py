"""Stream administration: configuration, listing, deletion and retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from storage.errors import (
    ConsumerOffsetNotFound,
    InvalidPageToken,
    StreamNotFound,
    StreamTypeChange,
)
from storage.interface import EventStore
from storage.page_tokens import STREAMS, encode_page_token
from storage.records import (
    RetentionReport,
    StreamConfiguration,
    StreamSummary,
    StreamType,
)
from tests.contract.events import appended_offsets, new_events, offsets_of, with_ids
from tests.contract.leases import LONG_LEASE, configure_queue, enqueue, lease_one
from tests.contract.paging import all_dead_letters, all_streams, read_to_end

# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("stream_type", [StreamType.PERSISTENT, StreamType.EPHEMERAL])
async def test_configure_creates_a_typed_stream_and_stores_every_setting(
    store: EventStore, stream_name: str, stream_type: StreamType
) -> None:
    wanted = StreamConfiguration(
        stream_type=stream_type,
        retention_max_age=timedelta(days=2, hours=3, seconds=4, microseconds=5),
        retention_max_count=1234,
        max_delivery_attempts=9,
        default_visibility_timeout=timedelta(minutes=2, milliseconds=250),
    )
    assert await store.configure_stream(stream_name, wanted) == wanted
    assert await store.get_stream_configuration(stream_name) == wanted
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.stream_type, meta.length) == (stream_type, 0)


async def test_configure_without_a_type_leaves_it_to_the_first_write(
    store: EventStore, stream_name: str
) -> None:
    log, queue = f"{stream_name}-log", f"{stream_name}-queue"
    for name in (log, queue):
        stored = await store.configure_stream(name, StreamConfiguration(max_delivery_attempts=3))
        assert stored.stream_type is None
        assert (await store.get_stream_configuration(name)).stream_type is None
    await store.append_to_stream(log, new_events(1))
    await enqueue(store, queue, new_events(1))
    assert (await store.get_stream_configuration(log)).stream_type == StreamType.PERSISTENT
    assert (await store.get_stream_configuration(queue)).stream_type == StreamType.EPHEMERAL
    # The settings given before the first write stay.
    assert (await store.get_stream_configuration(queue)).max_delivery_attempts == 3


async def test_configure_replaces_every_setting(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(
        stream_name,
        StreamConfiguration(
            StreamType.PERSISTENT,
            retention_max_age=timedelta(hours=1),
            retention_max_count=10,
            max_delivery_attempts=2,
            default_visibility_timeout=timedelta(seconds=5),
        ),
    )
    replacement = StreamConfiguration(StreamType.PERSISTENT, retention_max_count=20)
    assert await store.configure_stream(stream_name, replacement) == replacement
    assert await store.get_stream_configuration(stream_name) == replacement


async def test_configure_without_a_type_keeps_the_type_decided(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    stored = await store.configure_stream(stream_name, StreamConfiguration(max_delivery_attempts=7))
    assert (stored.stream_type, stored.max_delivery_attempts) == (StreamType.EPHEMERAL, 7)
    assert await store.get_stream_configuration(stream_name) == stored


async def test_configure_with_the_same_type_is_allowed(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    stored = await store.configure_stream(
        stream_name, StreamConfiguration(StreamType.PERSISTENT, retention_max_count=5)
    )
    assert stored.retention_max_count == 5
    assert await store.get_stream_length(stream_name) == 2


@pytest.mark.parametrize(
    ("decided", "wanted"),
    [
        (StreamType.PERSISTENT, StreamType.EPHEMERAL),
        (StreamType.EPHEMERAL, StreamType.PERSISTENT),
    ],
)
async def test_a_type_change_is_refused(
    store: EventStore, stream_name: str, decided: StreamType, wanted: StreamType
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(decided))
    with pytest.raises(StreamTypeChange) as caught:
        await store.configure_stream(stream_name, StreamConfiguration(wanted))
    assert (caught.value.stream_name, caught.value.actual, caught.value.wanted) == (
        stream_name,
        decided,
        wanted,
    )


async def test_a_type_decided_by_the_first_write_cannot_change(
    store: EventStore, stream_name: str
) -> None:
    log, queue = f"{stream_name}-log", f"{stream_name}-queue"
    await store.append_to_stream(log, new_events(1))
    await enqueue(store, queue, new_events(1))
    with pytest.raises(StreamTypeChange):
        await store.configure_stream(log, StreamConfiguration(StreamType.EPHEMERAL))
    with pytest.raises(StreamTypeChange):
        await store.configure_stream(queue, StreamConfiguration(StreamType.PERSISTENT))


async def test_a_stream_made_by_a_write_has_the_default_configuration(
    store: EventStore, stream_name: str
) -> None:
    log, queue = f"{stream_name}-log", f"{stream_name}-queue"
    await store.append_to_stream(log, new_events(1))
    await enqueue(store, queue, new_events(1))
    for name, stream_type in ((log, StreamType.PERSISTENT), (queue, StreamType.EPHEMERAL)):
        assert await store.get_stream_configuration(name) == StreamConfiguration(
            stream_type=stream_type,
            retention_max_age=None,
            retention_max_count=None,
            max_delivery_attempts=5,
            default_visibility_timeout=timedelta(seconds=30),
        )


async def test_configuration_of_an_unknown_stream_is_not_found(
    store: EventStore, stream_name: str
) -> None:
    with pytest.raises(StreamNotFound):
        await store.get_stream_configuration(stream_name)


# -- listing -------------------------------------------------------------------------


async def test_list_streams_pages_through_a_prefix_in_name_order(
    store: EventStore, stream_name: str
) -> None:
    prefix = f"{stream_name}-"
    names = [f"{prefix}{suffix}" for suffix in ("b", "a", "B", "0", "A", "z.1", "z:2", "z_3")]
    for name in names[::2]:
        await store.append_to_stream(name, new_events(2))
    for name in names[1::2]:
        await enqueue(store, name, new_events(1))
    expected = sorted(names)  # code point order: digits, upper case, then lower case
    first = await store.list_streams(prefix, 3, "")
    assert [s.stream_name for s in first.streams] == expected[:3]
    assert first.next_page_token
    second = await store.list_streams(prefix, 3, first.next_page_token)
    assert [s.stream_name for s in second.streams] == expected[3:6]
    assert second.next_page_token
    last = await store.list_streams(prefix, 3, second.next_page_token)
    assert [s.stream_name for s in last.streams] == expected[6:]
    assert last.next_page_token == ""
    assert [s.stream_name for s in await all_streams(store, prefix, page_size=1)] == expected


async def test_list_streams_summarises_type_and_length(store: EventStore, stream_name: str) -> None:
    prefix = f"{stream_name}-"
    await store.append_to_stream(f"{prefix}log", new_events(3))
    await enqueue(store, f"{prefix}queue", new_events(2))
    await store.configure_stream(f"{prefix}set", StreamConfiguration(StreamType.EPHEMERAL))
    assert await all_streams(store, prefix) == [
        StreamSummary(f"{prefix}log", StreamType.PERSISTENT, 3),
        StreamSummary(f"{prefix}queue", StreamType.EPHEMERAL, 2),
        StreamSummary(f"{prefix}set", StreamType.EPHEMERAL, 0),
    ]


async def test_a_full_last_page_has_no_token(store: EventStore, stream_name: str) -> None:
    prefix = f"{stream_name}-"
    for i in range(4):
        await store.append_to_stream(f"{prefix}{i}", new_events(1))
    page = await store.list_streams(prefix, 4, "")
    assert len(page.streams) == 4
    assert page.next_page_token == ""


async def test_a_prefix_is_matched_literally_and_only_at_the_start(
    store: EventStore, stream_name: str
) -> None:
    base = stream_name
    for name in (f"{base}_x", f"{base}ax", f"{base}.x", f"a{base}_x"):
        await store.append_to_stream(name, new_events(1))
    assert [s.stream_name for s in await all_streams(store, f"{base}_")] == [f"{base}_x"]
    assert [s.stream_name for s in await all_streams(store, f"{base}.")] == [f"{base}.x"]
    assert await all_streams(store, f"{base}%") == []


async def test_a_prefix_that_matches_nothing_lists_nothing(
    store: EventStore, stream_name: str
) -> None:
    page = await store.list_streams(stream_name, 10, "")
    assert (page.streams, page.next_page_token) == ((), "")


@pytest.mark.parametrize("token", ["garbage", "%%%", "ZGVhZC1sZXR0ZXJzLWFmdGVyOjE"])
async def test_a_stream_page_token_not_issued_is_refused(store: EventStore, token: str) -> None:
    with pytest.raises(InvalidPageToken) as caught:
        await store.list_streams("", 10, token)
    assert len(token) < 4 or token not in str(caught.value), "a token is never echoed back"


async def test_a_stream_token_naming_an_impossible_name_is_refused_or_pages_on(
    store: EventStore, stream_name: str
) -> None:
    prefix = f"{stream_name}-"
    await store.append_to_stream(f"{prefix}b", new_events(1))
    token = encode_page_token(STREAMS, f"{prefix}a\x00")
    try:
        page = await store.list_streams(prefix, 10, token)
    except InvalidPageToken:
        return
    assert [s.stream_name for s in page.streams] == [f"{prefix}b"]


# -- deletion ------------------------------------------------------------------------


async def test_delete_removes_a_log_and_everything_of_it(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(
        stream_name, StreamConfiguration(StreamType.PERSISTENT, retention_max_count=100)
    )
    batch = new_events(3)
    await store.append_to_stream(stream_name, batch)
    await store.commit_offset(stream_name, "g", 1)
    await store.delete_stream(stream_name)
    with pytest.raises(StreamNotFound):
        await store.get_stream_metadata(stream_name)
    with pytest.raises(StreamNotFound):
        await store.read_stream(stream_name, 0, 10)
    with pytest.raises(StreamNotFound):
        await store.get_stream_configuration(stream_name)
    with pytest.raises(StreamNotFound):
        await store.get_consumer_offset(stream_name, "g")
    assert await all_streams(store, stream_name) == []
    # The name is free again, and nothing of the old stream comes back with it.
    assert appended_offsets(await store.append_to_stream(stream_name, batch)) == (0, 2)
    assert await store.get_stream_length(stream_name) == 3
    assert (await store.get_stream_configuration(stream_name)).retention_max_count is None
    with pytest.raises(ConsumerOffsetNotFound):
        await store.get_consumer_offset(stream_name, "g")


async def test_delete_removes_a_queue_its_messages_and_dead_letters(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    dead, held, pending = await enqueue(store, stream_name, new_events(3))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", dead, timedelta(0), "bad")
    await lease_one(store, stream_name, "a")
    await store.delete_stream(stream_name)
    with pytest.raises(StreamNotFound):
        await store.get_stream_metadata(stream_name)
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 10)) == []
    assert await all_dead_letters(store, stream_name) == []
    # A fresh queue under the old name: every old id may be enqueued again.
    assert list(await enqueue(store, stream_name, with_ids([dead, held, pending]))) == [
        dead,
        held,
        pending,
    ]
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.pending_count, meta.dead_letter_count) == (3, 3, 0)
    assert (await store.get_stream_configuration(stream_name)).max_delivery_attempts == 5


async def test_a_deleted_name_may_take_the_other_type(store: EventStore, stream_name: str) -> None:
    await enqueue(store, stream_name, new_events(1))
    await store.delete_stream(stream_name)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (0, 0)


async def test_delete_of_an_unknown_stream_is_not_found(
    store: EventStore, stream_name: str
) -> None:
    with pytest.raises(StreamNotFound):
        await store.delete_stream(stream_name)


async def test_delete_leaves_other_streams_alone(store: EventStore, stream_name: str) -> None:
    other = f"{stream_name}-other"
    await store.append_to_stream(stream_name, new_events(1))
    await store.append_to_stream(other, new_events(2))
    await store.delete_stream(stream_name)
    assert await store.get_stream_length(other) == 2


# -- retention -----------------------------------------------------------------------


async def enforce_retention(store: EventStore, now: datetime | None = None) -> RetentionReport:
    """One retention pass of our own. A server sharing the database may be running
    its pass at the same moment (then ours is skipped): try again until ours ran."""
    for _ in range(100):
        report = await store.enforce_retention(now)
        if report.streams_examined:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError("no retention pass examined any stream")


async def configure_retention(
    store: EventStore,
    stream_name: str,
    *,
    max_count: int | None = None,
    max_age: timedelta | None = None,
) -> None:
    await store.configure_stream(
        stream_name,
        StreamConfiguration(
            StreamType.PERSISTENT, retention_max_age=max_age, retention_max_count=max_count
        ),
    )


async def test_retention_by_count_keeps_the_newest(store: EventStore, stream_name: str) -> None:
    await configure_retention(store, stream_name, max_count=3)
    await store.append_to_stream(stream_name, new_events(10))
    report = await enforce_retention(store)
    assert report.events_deleted >= 7
    assert offsets_of(await read_to_end(store, stream_name)) == [7, 8, 9]
    assert offsets_of(await read_to_end(store, stream_name, from_offset=8)) == [8, 9]
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        10,
        3,
        7,
        9,
    )
    assert await store.get_stream_length(stream_name) == 10
    # Appends go on from where the stream was.
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (10, 10)


async def test_retention_by_age_removes_what_is_older(store: EventStore, stream_name: str) -> None:
    max_age = timedelta(hours=1)
    await configure_retention(store, stream_name, max_age=max_age)
    await store.append_to_stream(stream_name, new_events(3))
    await asyncio.sleep(0.02)
    await store.append_to_stream(stream_name, new_events(2))
    events = await read_to_end(store, stream_name)
    # Only the first batch is older than max_age at this moment.
    await enforce_retention(store, events[3].timestamp + max_age)
    kept = await read_to_end(store, stream_name)
    assert [(e.offset, e.event_id) for e in kept] == [(e.offset, e.event_id) for e in events[3:]]
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.oldest_offset, meta.retained_count, meta.length) == (3, 2, 5)
    assert meta.oldest_event_timestamp == events[3].timestamp


async def test_retention_by_age_can_empty_a_log_but_not_reset_it(
    store: EventStore, stream_name: str
) -> None:
    await configure_retention(store, stream_name, max_age=timedelta(minutes=1))
    await store.append_to_stream(stream_name, new_events(4))
    await enforce_retention(store, datetime.now(UTC) + timedelta(days=1))
    page = await store.read_stream(stream_name, 0, 10)
    assert (page.events, page.end_of_stream) == ((), True)
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        4,
        0,
        -1,
        3,
    )
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (4, 4)


async def test_retention_by_age_and_count_removes_what_either_removes(
    store: EventStore, stream_name: str
) -> None:
    max_age = timedelta(hours=1)
    await store.configure_stream(
        stream_name,
        StreamConfiguration(
            StreamType.PERSISTENT, retention_max_age=max_age, retention_max_count=4
        ),
    )
    await store.append_to_stream(stream_name, new_events(2))
    await asyncio.sleep(0.02)
    await store.append_to_stream(stream_name, new_events(4))
    await asyncio.sleep(0.02)
    await store.append_to_stream(stream_name, new_events(1))
    events = await read_to_end(store, stream_name)
    # By count the newest 4 stay (3..6); by age, nothing yet.
    await enforce_retention(store, events[0].timestamp + max_age)
    assert offsets_of(await read_to_end(store, stream_name)) == [3, 4, 5, 6]
    # By age only the last batch is young enough (6); by count 3..6 would stay.
    await enforce_retention(store, events[6].timestamp + max_age)
    assert offsets_of(await read_to_end(store, stream_name)) == [6]


async def test_retention_keeps_young_events_and_streams_without_a_policy(
    store: EventStore, stream_name: str
) -> None:
    policy, free = f"{stream_name}-policy", f"{stream_name}-free"
    await configure_retention(store, policy, max_age=timedelta(days=1))
    for name in (policy, free):
        await store.append_to_stream(name, new_events(3))
    await enforce_retention(store, datetime.now(UTC))
    assert offsets_of(await read_to_end(store, policy)) == [0, 1, 2]
    assert offsets_of(await read_to_end(store, free)) == [0, 1, 2]


async def test_retention_leaves_committed_offsets_and_ids_as_they_were(
    store: EventStore, stream_name: str
) -> None:
    await configure_retention(store, stream_name, max_count=1)
    batch = new_events(3)
    await store.append_to_stream(stream_name, batch)
    await store.commit_offset(stream_name, "g", 0)
    await enforce_retention(store)
    assert await store.get_consumer_offset(stream_name, "g") == 0
    (kept,) = await read_to_end(store, stream_name)
    assert (kept.offset, kept.event_id) == (2, batch[2].event_id)


async def test_retention_is_for_logs_and_leaves_queues_alone(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(
        stream_name,
        StreamConfiguration(
            StreamType.EPHEMERAL, retention_max_age=timedelta(seconds=1), retention_max_count=1
        ),
    )
    await enqueue(store, stream_name, new_events(3))
    await configure_retention(store, f"{stream_name}-log", max_count=1)
    await enforce_retention(store, datetime.now(UTC) + timedelta(days=1))
    assert (await store.get_stream_metadata(stream_name)).pending_count == 3
    assert len(await store.dequeue(stream_name, "a", LONG_LEASE, 10)) == 3

"""A refused write changes nothing: it creates no stream, sets no stream type and
moves no offset (CONTRACT.md, "A refused write changes nothing")."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from storage.errors import (
    ConsumerOffsetNotFound,
    DuplicateEvent,
    MessageNotFound,
    OffsetOutOfRange,
    StorageError,
    StreamNotFound,
    StreamTypeChange,
    WrongExpectedOffset,
    WrongStreamType,
)
from storage.interface import EventStore
from storage.records import EnqueueResult, StreamConfiguration, StreamType
from tests.contract.backends import StoreCall
from tests.contract.events import appended_offsets, new_event, new_events, with_ids
from tests.contract.leases import LONG_LEASE, configure_queue, enqueue, lease_one
from tests.contract.paging import all_streams


async def assert_no_stream(store: EventStore, stream_name: str) -> None:
    with pytest.raises(StreamNotFound):
        await store.get_stream_metadata(stream_name)
    with pytest.raises(StreamNotFound):
        await store.get_stream_configuration(stream_name)
    assert await all_streams(store, stream_name) == []


# -- refused appends to a stream that does not exist ----------------------------------


async def test_a_refused_append_creates_no_stream(store: EventStore, stream_name: str) -> None:
    with pytest.raises(WrongExpectedOffset) as caught:
        await store.append_to_stream(stream_name, new_events(1), 5)
    assert caught.value.actual == -1
    await assert_no_stream(store, stream_name)


async def test_after_a_refused_append_the_name_may_become_a_queue(
    store: EventStore, stream_name: str
) -> None:
    with pytest.raises(WrongExpectedOffset):
        await store.append_to_stream(stream_name, new_events(1), 5)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    assert (await lease_one(store, stream_name, "a")).event.event_id == event_id


# -- refused appends to a configured stream without a type ---------------------------


async def test_a_refused_append_sets_no_stream_type(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(stream_type=None))
    with pytest.raises(WrongExpectedOffset):
        await store.append_to_stream(stream_name, new_events(1), 5)
    assert (await store.get_stream_configuration(stream_name)).stream_type is None


async def test_after_a_refused_append_a_typeless_stream_may_become_a_queue(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(stream_type=None))
    with pytest.raises(WrongExpectedOffset):
        await store.append_to_stream(stream_name, new_events(1), 0)
    await enqueue(store, stream_name, new_events(1))
    assert (await store.get_stream_metadata(stream_name)).stream_type == StreamType.EPHEMERAL


# -- refused appends to a log --------------------------------------------------------


async def test_a_refused_expectation_moves_no_offset(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    with pytest.raises(WrongExpectedOffset):
        await store.append_to_stream(stream_name, new_events(3), 0)
    assert await store.get_stream_length(stream_name) == 2
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (2, 2)


async def test_a_refused_partial_repeat_moves_no_offset(
    store: EventStore, stream_name: str
) -> None:
    old = new_event()
    await store.append_to_stream(stream_name, [old])
    with pytest.raises(DuplicateEvent):
        await store.append_to_stream(stream_name, [new_event(), new_event(), old])
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.retained_count, meta.newest_offset) == (1, 1, 0)
    assert appended_offsets(await store.append_to_stream(stream_name, new_events(1))) == (1, 1)


async def test_a_refused_append_to_a_queue_changes_nothing(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(2))
    with pytest.raises(WrongStreamType):
        await store.append_to_stream(stream_name, new_events(1))
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.stream_type, meta.length, meta.pending_count) == (StreamType.EPHEMERAL, 2, 2)


# -- refused enqueues ----------------------------------------------------------------


async def test_a_duplicate_in_an_enqueue_takes_no_position(
    store: EventStore, stream_name: str
) -> None:
    (queued,) = await enqueue(store, stream_name, new_events(1))
    fresh = uuid.uuid4()
    result = await store.enqueue(stream_name, with_ids([queued, fresh]))
    assert result == EnqueueResult((queued, fresh), (queued,))
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.pending_count) == (2, 2)
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 10)
    assert [(m.event.event_id, m.event.offset) for m in leased] == [(queued, 0), (fresh, 1)]


async def test_an_enqueue_of_nothing_but_duplicates_changes_nothing(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    (dead,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", dead, timedelta(0), "bad")
    assert await store.enqueue(stream_name, with_ids([dead])) == EnqueueResult((dead,), (dead,))
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.pending_count, meta.dead_letter_count) == (1, 0, 1)
    fresh = uuid.uuid4()
    await enqueue(store, stream_name, with_ids([fresh]))
    assert (await lease_one(store, stream_name, "a")).event.offset == 1


async def test_a_refused_enqueue_on_a_log_changes_nothing(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    with pytest.raises(WrongStreamType):
        await enqueue(store, stream_name, new_events(1))
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.stream_type, meta.length) == (StreamType.PERSISTENT, 2)


# -- refused configuration and commits -------------------------------------------------


async def test_a_refused_configure_changes_no_setting(store: EventStore, stream_name: str) -> None:
    original = StreamConfiguration(
        StreamType.PERSISTENT,
        retention_max_age=timedelta(hours=5),
        retention_max_count=50,
        max_delivery_attempts=4,
        default_visibility_timeout=timedelta(seconds=45),
    )
    await store.configure_stream(stream_name, original)
    with pytest.raises(StreamTypeChange):
        await store.configure_stream(
            stream_name, StreamConfiguration(StreamType.EPHEMERAL, max_delivery_attempts=9)
        )
    assert await store.get_stream_configuration(stream_name) == original


async def test_a_refused_commit_keeps_the_committed_offset(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    await store.commit_offset(stream_name, "g", 1)
    with pytest.raises(OffsetOutOfRange):
        await store.commit_offset(stream_name, "g", 3)
    assert await store.get_consumer_offset(stream_name, "g") == 1


async def test_a_refused_first_commit_creates_no_group(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(1))
    with pytest.raises(OffsetOutOfRange):
        await store.commit_offset(stream_name, "g", 1)
    with pytest.raises(ConsumerOffsetNotFound):
        await store.get_consumer_offset(stream_name, "g")


async def test_a_refused_commit_sets_no_stream_type(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(stream_type=None))
    with pytest.raises(OffsetOutOfRange):
        await store.commit_offset(stream_name, "g", 0)
    assert (await store.get_stream_configuration(stream_name)).stream_type is None
    await enqueue(store, stream_name, new_events(1))


# -- failed calls on a name that is not a stream ------------------------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda s, n: s.read_stream(n, 0, 10), StreamNotFound, id="read_stream"),
        pytest.param(lambda s, n: s.get_stream_length(n), StreamNotFound, id="length"),
        pytest.param(lambda s, n: s.commit_offset(n, "g", 0), StreamNotFound, id="commit"),
        pytest.param(
            lambda s, n: s.get_consumer_offset(n, "g"), StreamNotFound, id="consumer_offset"
        ),
        pytest.param(lambda s, n: s.delete_stream(n), StreamNotFound, id="delete"),
        pytest.param(
            lambda s, n: s.nack(n, "a", uuid.uuid4(), timedelta(0), ""), MessageNotFound, id="nack"
        ),
        pytest.param(
            lambda s, n: s.extend_visibility(n, "a", uuid.uuid4(), LONG_LEASE),
            MessageNotFound,
            id="extend",
        ),
    ],
)
async def test_a_failed_call_on_an_unknown_name_creates_no_stream(
    store: EventStore, stream_name: str, call: StoreCall, error: type[StorageError]
) -> None:
    with pytest.raises(error):
        await call(store, stream_name)
    await assert_no_stream(store, stream_name)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, n: s.dequeue(n, "a", LONG_LEASE, 1), id="dequeue"),
        pytest.param(lambda s, n: s.acknowledge(n, "a", [uuid.uuid4()]), id="acknowledge"),
        pytest.param(lambda s, n: s.list_dead_letters(n, 10, ""), id="list_dead_letters"),
        pytest.param(lambda s, n: s.redrive_dead_letters(n, []), id="redrive"),
    ],
)
async def test_a_queue_call_that_finds_nothing_creates_no_stream(
    store: EventStore, stream_name: str, call: StoreCall
) -> None:
    await call(store, stream_name)
    await assert_no_stream(store, stream_name)

"""Atomic appends to several streams, and checkpoints written with them, on every
backend: all or nothing, every failed expectation named, an idempotent retry of
the whole call, exactly-once consumers, and no deadlock whatever the order."""

from __future__ import annotations

import asyncio
import random

import pytest

from storage.errors import (
    CheckpointExists,
    DuplicateEvent,
    OffsetOutOfRange,
    StreamNotFound,
    WrongExpectedOffsets,
    WrongStreamType,
)
from storage.interface import EventStore
from storage.records import ALL_STREAM, ConsumerCheckpoint, StreamAppend
from tests.contract.events import new_event, new_events


async def lengths(store: EventStore, names: list[str]) -> list[int | None]:
    """Each stream's length, None for one that does not exist."""
    found: list[int | None] = []
    for name in names:
        try:
            found.append(await store.get_stream_length(name))
        except StreamNotFound:
            found.append(None)
    return found


async def test_one_stale_expectation_writes_nothing_anywhere(
    store: EventStore, stream_name: str
) -> None:
    names = [f"{stream_name}-{i}" for i in range(5)]
    for name in names[:3]:
        await store.append_to_stream(name, new_events(1))
    appends = [
        StreamAppend(name, new_events(2), 0 if i < 3 else -1) for i, name in enumerate(names)
    ]
    appends[1] = StreamAppend(names[1], new_events(2), 7)  # stale
    with pytest.raises(WrongExpectedOffsets) as caught:
        await store.append_to_streams(appends)
    assert [(f.stream_name, f.expected, f.actual) for f in caught.value.failures] == [
        (names[1], 7, 0)
    ]
    assert await lengths(store, names) == [1, 1, 1, None, None]


async def test_every_failed_expectation_is_named(store: EventStore, stream_name: str) -> None:
    names = [f"{stream_name}-{i}" for i in range(3)]
    await store.append_to_stream(names[0], new_events(2))
    appends = [
        StreamAppend(names[0], new_events(1), 0),
        StreamAppend(names[1], new_events(1), 4),
        StreamAppend(names[2], new_events(1), -1),
    ]
    with pytest.raises(WrongExpectedOffsets) as caught:
        await store.append_to_streams(appends)
    failures = {f.stream_name: (f.expected, f.actual) for f in caught.value.failures}
    assert failures == {names[0]: (0, 1), names[1]: (4, -1)}
    assert await lengths(store, names) == [2, None, None]


async def test_a_retry_of_the_whole_call_writes_nothing_and_answers_as_before(
    store: EventStore, stream_name: str
) -> None:
    appends = [
        StreamAppend(f"{stream_name}-a", new_events(2), -1),
        StreamAppend(f"{stream_name}-b", new_events(1), -1),
    ]
    first = await store.append_to_streams(appends)
    await store.append_to_stream(f"{stream_name}-a", new_events(1))
    retry = await store.append_to_streams(appends)
    assert retry == first
    assert await lengths(store, [f"{stream_name}-a", f"{stream_name}-b"]) == [3, 1]


async def test_a_partial_repeat_is_a_duplicate_and_writes_nothing(
    store: EventStore, stream_name: str
) -> None:
    known = new_event()
    await store.append_to_stream(f"{stream_name}-a", [known])
    appends = [
        StreamAppend(f"{stream_name}-a", [known, new_event()]),
        StreamAppend(f"{stream_name}-b", new_events(1)),
    ]
    with pytest.raises(DuplicateEvent) as caught:
        await store.append_to_streams(appends)
    assert caught.value.event_id == known.event_id
    assert await lengths(store, [f"{stream_name}-a", f"{stream_name}-b"]) == [1, None]


async def test_a_queue_among_the_streams_refuses_the_whole_call(
    store: EventStore, stream_name: str
) -> None:
    await store.enqueue(f"{stream_name}-q", new_events(1))
    appends = [
        StreamAppend(f"{stream_name}-a", new_events(1)),
        StreamAppend(f"{stream_name}-q", new_events(1)),
    ]
    with pytest.raises(WrongStreamType):
        await store.append_to_streams(appends)
    assert await lengths(store, [f"{stream_name}-a"]) == [None]


async def test_a_checkpoint_commits_with_the_appends(store: EventStore, stream_name: str) -> None:
    source = f"{stream_name}-in"
    await store.append_to_stream(source, new_events(3))
    checkpoint = ConsumerCheckpoint(source, "projector", 1)
    await store.append_to_streams([StreamAppend(f"{stream_name}-out", new_events(1))], checkpoint)
    assert await store.get_consumer_offset(source, "projector") == 1
    # The same input again: processed before, so nothing is written.
    with pytest.raises(CheckpointExists) as caught:
        await store.append_to_streams(
            [StreamAppend(f"{stream_name}-out", new_events(1))], checkpoint
        )
    assert caught.value.committed == 1
    assert await lengths(store, [f"{stream_name}-out"]) == [1]
    # An earlier input too.
    with pytest.raises(CheckpointExists):
        await store.append_to_streams(
            [StreamAppend(f"{stream_name}-out", new_events(1))],
            ConsumerCheckpoint(source, "projector", 0),
        )
    # The next input goes in.
    await store.append_to_streams(
        [StreamAppend(f"{stream_name}-out", new_events(1))],
        ConsumerCheckpoint(source, "projector", 2),
    )
    assert await store.get_consumer_offset(source, "projector") == 2
    assert await lengths(store, [f"{stream_name}-out"]) == [2]


async def test_a_checkpoint_alone_is_allowed(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    assert await store.append_to_streams([], ConsumerCheckpoint(stream_name, "g", 1)) == ()
    assert await store.get_consumer_offset(stream_name, "g") == 1


async def test_a_checkpoint_on_the_global_log(store: EventStore, stream_name: str) -> None:
    source = await store.append_to_stream(f"{stream_name}-in", new_events(1))
    group = f"{stream_name}-group"
    checkpoint = ConsumerCheckpoint(ALL_STREAM, group, source.last_global_position)
    await store.append_to_streams([StreamAppend(f"{stream_name}-out", new_events(1))], checkpoint)
    assert await store.get_consumer_offset(ALL_STREAM, group) == source.last_global_position
    with pytest.raises(CheckpointExists):
        await store.append_to_streams(
            [StreamAppend(f"{stream_name}-out", new_events(1))], checkpoint
        )


async def test_a_checkpoint_must_name_an_existing_position(
    store: EventStore, stream_name: str
) -> None:
    out = [StreamAppend(f"{stream_name}-out", new_events(1))]
    with pytest.raises(StreamNotFound):
        await store.append_to_streams(out, ConsumerCheckpoint(f"{stream_name}-none", "g", 0))
    await store.append_to_stream(f"{stream_name}-in", new_events(1))
    with pytest.raises(OffsetOutOfRange):
        await store.append_to_streams(out, ConsumerCheckpoint(f"{stream_name}-in", "g", 5))
    with pytest.raises(OffsetOutOfRange):
        await store.append_to_streams(out, ConsumerCheckpoint(ALL_STREAM, "g", 2**62))
    assert await lengths(store, [f"{stream_name}-out"]) == [None]


async def test_calls_naming_streams_in_opposite_orders_never_deadlock(
    store: EventStore, stream_name: str
) -> None:
    names = [f"{stream_name}-{i}" for i in range(4)]
    rng = random.Random(7)

    async def one() -> None:
        order = names[:]
        rng.shuffle(order)
        await store.append_to_streams([StreamAppend(name, new_events(1)) for name in order])

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), timeout=60)
    assert await lengths(store, names) == [40] * 4

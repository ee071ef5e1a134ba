"""Consumer groups' committed offsets on persistent streams."""

from __future__ import annotations

import pytest

from storage.errors import (
    ConsumerOffsetNotFound,
    OffsetOutOfRange,
    StreamNotFound,
    WrongStreamType,
)
from storage.interface import EventStore
from storage.records import StreamConfiguration, StreamType
from tests.contract.events import new_events


async def test_a_committed_offset_is_read_back(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(5))
    await store.commit_offset(stream_name, "billing", 2)
    assert await store.get_consumer_offset(stream_name, "billing") == 2


async def test_a_later_commit_replaces_the_earlier(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(5))
    await store.commit_offset(stream_name, "billing", 1)
    await store.commit_offset(stream_name, "billing", 4)
    assert await store.get_consumer_offset(stream_name, "billing") == 4
    # A group may go back, to process events again.
    await store.commit_offset(stream_name, "billing", 0)
    assert await store.get_consumer_offset(stream_name, "billing") == 0


async def test_groups_and_streams_keep_their_own_offsets(
    store: EventStore, stream_name: str
) -> None:
    other = f"{stream_name}-other"
    for name in (stream_name, other):
        await store.append_to_stream(name, new_events(5))
    await store.commit_offset(stream_name, "a", 1)
    await store.commit_offset(stream_name, "b", 3)
    await store.commit_offset(other, "a", 4)
    assert await store.get_consumer_offset(stream_name, "a") == 1
    assert await store.get_consumer_offset(stream_name, "b") == 3
    assert await store.get_consumer_offset(other, "a") == 4


async def test_the_newest_offset_may_be_committed(store: EventStore, stream_name: str) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    await store.commit_offset(stream_name, "g", 2)
    assert await store.get_consumer_offset(stream_name, "g") == 2


@pytest.mark.parametrize("beyond", [3, 4, 1_000_000])
async def test_an_offset_beyond_the_newest_is_out_of_range(
    store: EventStore, stream_name: str, beyond: int
) -> None:
    await store.append_to_stream(stream_name, new_events(3))
    with pytest.raises(OffsetOutOfRange) as caught:
        await store.commit_offset(stream_name, "g", beyond)
    assert (caught.value.offset, caught.value.newest) == (beyond, 2)
    assert caught.value.stream_name == stream_name


async def test_any_offset_of_an_empty_log_is_out_of_range(
    store: EventStore, stream_name: str
) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.PERSISTENT))
    with pytest.raises(OffsetOutOfRange) as caught:
        await store.commit_offset(stream_name, "g", 0)
    assert caught.value.newest == -1


async def test_a_group_that_never_committed_has_no_offset(
    store: EventStore, stream_name: str
) -> None:
    await store.append_to_stream(stream_name, new_events(2))
    await store.commit_offset(stream_name, "someone-else", 1)
    with pytest.raises(ConsumerOffsetNotFound) as caught:
        await store.get_consumer_offset(stream_name, "newcomer")
    assert (caught.value.stream_name, caught.value.consumer_group) == (stream_name, "newcomer")


async def test_offsets_of_an_unknown_stream_are_not_found(
    store: EventStore, stream_name: str
) -> None:
    with pytest.raises(StreamNotFound):
        await store.commit_offset(stream_name, "g", 0)
    with pytest.raises(StreamNotFound):
        await store.get_consumer_offset(stream_name, "g")


async def test_offsets_on_a_queue_are_the_wrong_type(store: EventStore, stream_name: str) -> None:
    await store.enqueue(stream_name, new_events(3))
    with pytest.raises(WrongStreamType) as caught:
        await store.commit_offset(stream_name, "g", 0)
    assert (caught.value.actual, caught.value.wanted) == (
        StreamType.EPHEMERAL,
        StreamType.PERSISTENT,
    )
    with pytest.raises(WrongStreamType):
        await store.get_consumer_offset(stream_name, "g")

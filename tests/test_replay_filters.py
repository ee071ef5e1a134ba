"""ReadStream replay options (from_timestamp, event_types) on both backends."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import append, error_info, event, events, read_all

Stub = pb_grpc.EventStreamingStub


async def read(stub: Stub, name: str, **options: object) -> pb.ReadStreamResponse:
    return await stub.ReadStream(pb.ReadStreamRequest(stream_name=name, **options))


def shifted(stamp: Timestamp, delta: timedelta) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(stamp.ToDatetime() + delta)
    return result


async def test_read_by_event_type_returns_only_those_types_in_order(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, [event(t) for t in "ABACBAC"])
    found = await read_all(stub, stream_name, event_types=["A", "C"])
    assert [(e.offset, e.event_type) for e in found] == [
        (0, "A"),
        (2, "A"),
        (3, "C"),
        (5, "A"),
        (6, "C"),
    ]


async def test_read_by_event_type_pages_without_gaps_or_repeats(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, [event("A" if i % 3 == 0 else "B") for i in range(30)])
    found = await read_all(stub, stream_name, event_types=["A"], max_count=4)
    assert [e.offset for e in found] == list(range(0, 30, 3))


async def test_read_by_event_type_with_no_match_reaches_the_end(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(5, "A"))
    reply = await read(stub, stream_name, event_types=["Missing"])
    assert list(reply.events) == []
    assert reply.end_of_stream
    assert reply.next_offset == 5


async def test_read_from_timestamp_skips_older_events(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(3, "Old"))
    await append(stub, stream_name, events(2, "New"))
    newer = (await read(stub, stream_name, from_offset=3)).events[0].timestamp
    found = await read_all(stub, stream_name, from_timestamp=newer)
    assert [(e.offset, e.event_type) for e in found] == [(3, "New"), (4, "New")]
    # A moment earlier includes the whole second batch, a moment later none of it.
    earlier = shifted(newer, timedelta(microseconds=-1))
    assert [e.offset for e in await read_all(stub, stream_name, from_timestamp=earlier)] == [3, 4]
    later = shifted(newer, timedelta(microseconds=1))
    assert await read_all(stub, stream_name, from_timestamp=later) == []


async def test_read_with_timestamp_and_types_applies_both(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, [event("A"), event("B")])
    await append(stub, stream_name, [event("A"), event("B"), event("A")])
    since = (await read(stub, stream_name, from_offset=2)).events[0].timestamp
    found = await read_all(stub, stream_name, from_timestamp=since, event_types=["A"])
    assert [e.offset for e in found] == [2, 4]


async def test_filtered_read_from_an_offset_starts_there(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, [event(t) for t in "ABABAB"])
    reply = await read(stub, stream_name, from_offset=3, event_types=["A"])
    assert [e.offset for e in reply.events] == [4]
    assert reply.end_of_stream


async def test_filtered_read_returns_events_whole(stub: Stub, stream_name: str) -> None:
    written = pb.EventData(
        event_type="Kept",
        data=b"\x00raw",
        content_type="application/octet-stream",
        metadata={"k": "v"},
        correlation_id="c1",
    )
    await append(stub, stream_name, [event("Dropped"), written])
    (found,) = (await read(stub, stream_name, event_types=["Kept"])).events
    assert (found.offset, found.data, found.content_type) == (
        1,
        b"\x00raw",
        "application/octet-stream",
    )
    assert dict(found.metadata) == {"k": "v"}
    assert found.correlation_id == "c1"


async def test_empty_event_type_in_the_filter_is_invalid(
    memory_stub: Stub, stream_name: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    await append(stub, stream_name, events(1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read(stub, stream_name, event_types=["A", ""])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == "event_types[1]"

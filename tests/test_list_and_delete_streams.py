"""ListStreams (prefix, paging) and DeleteStream on both backends."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import append, error_info, events, unique_name

Stub = pb_grpc.EventStreamingStub


async def list_all(stub: Stub, prefix: str, page_size: int) -> list[list[pb.StreamSummary]]:
    """Every page of a listing."""
    pages: list[list[pb.StreamSummary]] = []
    token = ""
    while True:
        reply = await stub.ListStreams(
            pb.ListStreamsRequest(prefix=prefix, page_size=page_size, page_token=token)
        )
        pages.append(list(reply.streams))
        token = reply.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "paging does not end"


async def test_list_streams_pages_through_a_prefix_in_name_order(stub: Stub) -> None:
    base = unique_name("list")
    names = [f"{base}-{suffix}" for suffix in ("e", "a", "d", "b", "c")]
    for i, name in enumerate(names):
        await append(stub, name, i + 1)
    pages = await list_all(stub, base, page_size=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [s for page in pages for s in page]
    assert [s.stream_name for s in listed] == sorted(names)
    lengths = {name: i + 1 for i, name in enumerate(names)}
    assert [s.length for s in listed] == [lengths[s.stream_name] for s in listed]
    assert {s.stream_type for s in listed} == {pb.STREAM_TYPE_PERSISTENT}


async def test_list_streams_shows_queues_with_their_type(stub: Stub) -> None:
    base = unique_name("kinds")
    await append(stub, f"{base}-log", 2)
    await stub.Enqueue(pb.EnqueueRequest(stream_name=f"{base}-queue", events=events(3)))
    (page,) = await list_all(stub, base, page_size=10)
    assert [(s.stream_name, s.stream_type, s.length) for s in page] == [
        (f"{base}-log", pb.STREAM_TYPE_PERSISTENT, 2),
        (f"{base}-queue", pb.STREAM_TYPE_EPHEMERAL, 3),
    ]


async def test_list_streams_prefix_matches_literally(stub: Stub) -> None:
    base = unique_name("lit")
    # "_" and "." must not act as wildcards, and case matters.
    for name in (f"{base}_x", f"{base}ax", f"{base}.x", f"{base}_y", f"{base.upper()}_x"):
        await append(stub, name, 1)
    (page,) = await list_all(stub, f"{base}_", page_size=10)
    assert [s.stream_name for s in page] == [f"{base}_x", f"{base}_y"]


async def test_list_streams_with_an_exact_page_has_no_next_token(stub: Stub) -> None:
    base = unique_name("exact")
    for suffix in "ab":
        await append(stub, f"{base}-{suffix}", 1)
    reply = await stub.ListStreams(pb.ListStreamsRequest(prefix=base, page_size=2))
    assert len(reply.streams) == 2
    assert reply.next_page_token == ""


async def test_list_streams_without_match_is_empty(stub: Stub) -> None:
    reply = await stub.ListStreams(pb.ListStreamsRequest(prefix=unique_name("none")))
    assert list(reply.streams) == []
    assert reply.next_page_token == ""


async def test_list_streams_without_prefix_lists_everything_in_order(stub: Stub) -> None:
    name = unique_name("all")
    await append(stub, name, 1)
    pages = await list_all(stub, "", page_size=1000)
    listed = [s.stream_name for page in pages for s in page]
    assert name in listed
    assert listed == sorted(listed)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"prefix": "bad prefix"}, "prefix"),
        ({"prefix": "-leading-dash"}, "prefix"),
    ],
)
async def test_list_streams_names_the_invalid_field(
    memory_stub: Stub, request_fields: dict[str, object], field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListStreams(pb.ListStreamsRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == field
    assert (caught.value.details() or "").startswith(f"{field}: ")


async def expect_not_found(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_stream_removes_events_offsets_and_configuration(
    stub: Stub, stream_name: str
) -> None:
    await stub.ConfigureStream(
        pb.ConfigureStreamRequest(
            stream_name=stream_name,
            configuration=pb.StreamConfiguration(
                stream_type=pb.STREAM_TYPE_PERSISTENT,
                retention_max_count=100,
                retention_max_age=Duration(seconds=3600),
            ),
        )
    )
    await append(stub, stream_name, 5)
    await stub.CommitOffset(
        pb.CommitOffsetRequest(stream_name=stream_name, consumer_group="g", offset=4)
    )
    await stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name))

    await expect_not_found(stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name)))
    await expect_not_found(stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name)))
    await expect_not_found(
        stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=stream_name))
    )
    await expect_not_found(
        stub.GetConsumerOffset(
            pb.GetConsumerOffsetRequest(stream_name=stream_name, consumer_group="g")
        )
    )
    await expect_not_found(
        stub.GetStreamConfiguration(pb.GetStreamConfigurationRequest(stream_name=stream_name))
    )
    listed = await stub.ListStreams(pb.ListStreamsRequest(prefix=stream_name))
    assert list(listed.streams) == []

    # The name is free again: a new stream starts from scratch.
    await append(stub, stream_name, 2)
    read = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name))
    assert [e.offset for e in read.events] == [0, 1]
    await expect_not_found(
        stub.GetConsumerOffset(
            pb.GetConsumerOffsetRequest(stream_name=stream_name, consumer_group="g")
        )
    )
    config = await stub.GetStreamConfiguration(
        pb.GetStreamConfigurationRequest(stream_name=stream_name)
    )
    assert config.configuration.retention_max_count == 0


async def test_delete_stream_removes_queue_messages_and_dead_letters(
    stub: Stub, stream_name: str
) -> None:
    await stub.ConfigureStream(
        pb.ConfigureStreamRequest(
            stream_name=stream_name,
            configuration=pb.StreamConfiguration(
                stream_type=pb.STREAM_TYPE_EPHEMERAL, max_delivery_attempts=1
            ),
        )
    )
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=events(3)))
    taken = await stub.Dequeue(
        pb.DequeueRequest(stream_name=stream_name, consumer_id="worker", max_messages=1)
    )
    # One message dead-lettered, one in flight, one pending.
    await stub.Nack(
        pb.NackRequest(
            stream_name=stream_name,
            consumer_id="worker",
            event_id=taken.messages[0].event.event_id,
            reason="broken",
        )
    )
    await stub.Dequeue(pb.DequeueRequest(stream_name=stream_name, consumer_id="worker"))
    await stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name))

    await expect_not_found(
        stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=stream_name))
    )
    # Reused as a queue, it holds nothing of the old one.
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=events(1)))
    meta = await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=stream_name))
    assert (meta.length, meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (
        1,
        1,
        0,
        0,
    )
    dead = await stub.ListDeadLetters(pb.ListDeadLettersRequest(stream_name=stream_name))
    assert list(dead.dead_letters) == []


async def test_delete_of_an_unknown_stream_is_not_found(stub: Stub, stream_name: str) -> None:
    await expect_not_found(stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name)))


async def test_delete_twice_is_not_found_the_second_time(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, 1)
    await stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name))
    await expect_not_found(stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name)))


async def test_delete_with_an_invalid_name_names_the_field(memory_stub: Stub) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteStream(pb.DeleteStreamRequest(stream_name="no spaces"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == "stream_name"

"""Consumer-group offsets: CommitOffset and GetConsumerOffset on both backends."""

from __future__ import annotations

import grpc
import pytest

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import append, error_info, event, unique_name

Stub = pb_grpc.EventStreamingStub


async def commit(stub: Stub, name: str, group: str, offset: int) -> None:
    await stub.CommitOffset(
        pb.CommitOffsetRequest(stream_name=name, consumer_group=group, offset=offset)
    )


async def committed(stub: Stub, name: str, group: str) -> int:
    reply = await stub.GetConsumerOffset(
        pb.GetConsumerOffsetRequest(stream_name=name, consumer_group=group)
    )
    return reply.offset


async def test_committed_offset_is_returned(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, 5)
    await commit(stub, stream_name, "projector", 2)
    assert await committed(stub, stream_name, "projector") == 2


async def test_commit_replaces_the_previous_offset_forward_and_back(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, 10)
    await commit(stub, stream_name, "g", 3)
    await commit(stub, stream_name, "g", 9)
    assert await committed(stub, stream_name, "g") == 9
    # Rewinding a group (to reprocess) is allowed.
    await commit(stub, stream_name, "g", 0)
    assert await committed(stub, stream_name, "g") == 0


async def test_groups_and_streams_keep_separate_offsets(stub: Stub, stream_name: str) -> None:
    other = unique_name()
    await append(stub, stream_name, 5)
    await append(stub, other, 5)
    await commit(stub, stream_name, "a", 1)
    await commit(stub, stream_name, "b", 4)
    await commit(stub, other, "a", 3)
    assert await committed(stub, stream_name, "a") == 1
    assert await committed(stub, stream_name, "b") == 4
    assert await committed(stub, other, "a") == 3


async def test_commit_of_the_newest_offset_is_accepted(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, 3)
    await commit(stub, stream_name, "g", 2)
    assert await committed(stub, stream_name, "g") == 2


async def test_commit_beyond_the_newest_offset_is_out_of_range(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, 3)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await commit(stub, stream_name, "g", 3)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "newest offset 2" in (caught.value.details() or "")
    assert error_info(caught.value)["newest_offset"] == "2"
    # Nothing was recorded.
    with pytest.raises(grpc.aio.AioRpcError) as never:
        await committed(stub, stream_name, "g")
    assert never.value.code() == grpc.StatusCode.NOT_FOUND


async def test_commit_on_an_unknown_stream_is_not_found(stub: Stub, stream_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await commit(stub, stream_name, "g", 0)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert stream_name in (caught.value.details() or "")


async def test_offset_of_a_group_that_never_committed_is_not_found(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await committed(stub, stream_name, "newcomer")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "newcomer" in (caught.value.details() or "")


async def test_offset_on_an_unknown_stream_is_not_found(stub: Stub, stream_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await committed(stub, stream_name, "g")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_commit_on_a_queue_fails_precondition(stub: Stub, stream_name: str) -> None:
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=[event()]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await commit(stub, stream_name, "g", 0)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ephemeral" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"consumer_group": "g", "offset": -1}, "offset"),
        ({"consumer_group": "", "offset": 0}, "consumer_group"),
        ({"consumer_group": "x" * 201, "offset": 0}, "consumer_group"),
        ({"consumer_group": "g\n", "offset": 0}, "consumer_group"),
    ],
)
async def test_commit_names_the_invalid_field(
    memory_stub: Stub, stream_name: str, request_fields: dict[str, object], field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    await append(stub, stream_name, 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CommitOffset(pb.CommitOffsetRequest(stream_name=stream_name, **request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == field

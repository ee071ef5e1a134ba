"""Durations and timestamps beyond what protobuf allows are named, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

HUGE = Duration(seconds=10**15)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (
            lambda name: pb.DequeueRequest(stream_name=name, consumer_id="c", wait_time=HUGE),
            "wait_time",
        ),
        (
            lambda name: pb.DequeueRequest(
                stream_name=name, consumer_id="c", visibility_timeout=HUGE
            ),
            "visibility_timeout",
        ),
        (
            lambda name: pb.ConfigureStreamRequest(
                stream_name=name,
                configuration=pb.StreamConfiguration(retention_max_age=HUGE),
            ),
            "configuration.retention_max_age",
        ),
    ],
    ids=["wait_time", "visibility_timeout", "retention_max_age"],
)
async def test_duration_beyond_protobuf_range_is_named(
    memory_stub: pb_grpc.EventStreamingStub, stream_name: str, make: object, field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    request = make(stream_name)  # type: ignore[operator]
    method = {
        pb.DequeueRequest: stub.Dequeue,
        pb.ConfigureStreamRequest: stub.ConfigureStream,
    }[type(request)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")

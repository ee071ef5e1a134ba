"""Request builders shared by the queue tests."""

from __future__ import annotations

import time
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import event, events, wait_until

Stub = pb_grpc.EventStreamingStub


def epoch(value: Timestamp) -> float:
    """A timestamp as seconds since the epoch, with its fraction."""
    return value.ToNanoseconds() / 1e9


def seconds(value: float) -> Duration:
    result = Duration()
    result.FromTimedelta(timedelta(seconds=value))
    return result


async def enqueue(stub: Stub, name: str, count: int = 1) -> list[str]:
    reply = await stub.Enqueue(pb.EnqueueRequest(stream_name=name, events=events(count)))
    return list(reply.event_ids)


async def dequeue(
    stub: Stub,
    name: str,
    consumer: str,
    *,
    max_messages: int = 10,
    visibility: float | None = 30.0,
    wait: float = 0.0,
) -> list[pb.QueueMessage]:
    request = pb.DequeueRequest(stream_name=name, consumer_id=consumer, max_messages=max_messages)
    if visibility is not None:
        request.visibility_timeout.CopyFrom(seconds(visibility))
    if wait:
        request.wait_time.CopyFrom(seconds(wait))
    reply = await stub.Dequeue(request, timeout=wait + 30)
    return list(reply.messages)


def ids_of(messages: list[pb.QueueMessage]) -> list[str]:
    return [m.event.event_id for m in messages]


async def ack(stub: Stub, name: str, consumer: str, ids: list[str]) -> pb.AcknowledgeResponse:
    return await stub.Acknowledge(
        pb.AcknowledgeRequest(stream_name=name, consumer_id=consumer, event_ids=ids)
    )


async def nack(
    stub: Stub, name: str, consumer: str, event_id: str, *, delay: float = 0.0, reason: str = ""
) -> None:
    request = pb.NackRequest(
        stream_name=name, consumer_id=consumer, event_id=event_id, reason=reason
    )
    if delay:
        request.delay.CopyFrom(seconds(delay))
    await stub.Nack(request)


async def configure_queue(
    stub: Stub, name: str, *, max_attempts: int = 0, visibility: float | None = None
) -> pb.StreamConfiguration:
    config = pb.StreamConfiguration(
        stream_type=pb.STREAM_TYPE_EPHEMERAL, max_delivery_attempts=max_attempts
    )
    if visibility is not None:
        config.default_visibility_timeout.CopyFrom(seconds(visibility))
    reply = await stub.ConfigureStream(
        pb.ConfigureStreamRequest(stream_name=name, configuration=config)
    )
    return reply.configuration


async def dead_letters(stub: Stub, name: str, max_count: int = 0) -> list[pb.DeadLetter]:
    reply = await stub.ListDeadLetters(
        pb.ListDeadLettersRequest(stream_name=name, max_count=max_count)
    )
    return list(reply.dead_letters)


async def metadata(stub: Stub, name: str) -> pb.GetStreamMetadataResponse:
    return await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name))


async def enqueue_ids(stub: Stub, name: str, ids: list[str]) -> list[str]:
    """Enqueue one event per given id (an id may come back after an ack or a redrive)."""
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=name, events=[event(event_id=i) for i in ids])
    )
    return list(reply.event_ids)


async def extend(
    stub: Stub, name: str, consumer: str, event_id: str, visibility: float
) -> pb.ExtendVisibilityResponse:
    return await stub.ExtendVisibility(
        pb.ExtendVisibilityRequest(
            stream_name=name,
            consumer_id=consumer,
            event_id=event_id,
            visibility_timeout=seconds(visibility),
        )
    )


async def redrive(stub: Stub, name: str, ids: list[str] | None = None) -> int:
    reply = await stub.RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(stream_name=name, event_ids=ids or [])
    )
    return reply.redriven_count


async def lease_ended(message: pb.QueueMessage, margin: float = 0.1) -> None:
    """Wait until the message's lease has run out (by ``margin`` seconds)."""
    await wait_until(lambda: time.time() - margin > epoch(message.visible_until))

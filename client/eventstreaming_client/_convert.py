"""Protobuf messages <-> the dataclasses of :mod:`eventstreaming_client.models`.
Both clients build their requests and read their responses through here."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import (
    AckResult,
    AppendResult,
    ConsumerCheckpoint,
    DeadLetter,
    DeadLetterPage,
    NewEvent,
    QueueMessage,
    ReadAllResult,
    ReadResult,
    RecordedEvent,
    StreamAppend,
    StreamConfiguration,
    StreamMetadata,
    StreamPage,
    StreamSummary,
    StreamType,
)


def duration(value: timedelta) -> Duration:
    result = Duration()
    result.FromTimedelta(value)
    return result


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return result


def from_timestamp(value: Timestamp, present: bool = True) -> datetime | None:
    if not present:
        return None
    return value.ToDatetime(tzinfo=UTC)


def from_duration(value: Duration, present: bool = True) -> timedelta | None:
    return value.ToTimedelta() if present else None


def with_ids(events: Iterable[NewEvent]) -> list[NewEvent]:
    """The events, each with an id: a write whose answer was lost can then be sent
    again and the server recognises it (an idempotent retry)."""
    result: list[NewEvent] = []
    for item in events:
        if item.event_id is None or item.event_id == "":
            item = NewEvent(
                event_type=item.event_type,
                data=item.data,
                content_type=item.content_type,
                metadata=item.metadata,
                event_id=uuid.uuid4(),
                correlation_id=item.correlation_id,
                causation_id=item.causation_id,
            )
        result.append(item)
    return result


def event_data(item: NewEvent) -> pb.EventData:
    return pb.EventData(
        event_id="" if item.event_id is None else str(item.event_id),
        event_type=item.event_type,
        data=item.encoded_data(),
        content_type=item.content_type,
        metadata=dict(item.metadata),
        correlation_id=item.correlation_id,
        causation_id=item.causation_id,
    )


def recorded_event(message: pb.Event) -> RecordedEvent:
    return RecordedEvent(
        stream_name=message.stream_name,
        offset=message.offset,
        event_id=message.event_id,
        event_type=message.event_type,
        data=message.data,
        content_type=message.content_type,
        metadata=dict(message.metadata),
        correlation_id=message.correlation_id,
        causation_id=message.causation_id,
        timestamp=from_timestamp(message.timestamp, message.HasField("timestamp")),
        global_position=message.global_position,
    )


def append_request(
    stream_name: str, events: Sequence[NewEvent], expected_last_offset: int | None
) -> pb.AppendToStreamRequest:
    request = pb.AppendToStreamRequest(
        stream_name=stream_name, events=[event_data(e) for e in events]
    )
    if expected_last_offset is not None:
        request.expected_last_offset = expected_last_offset
    return request


def append_result(reply: pb.AppendToStreamResponse) -> AppendResult:
    return AppendResult(
        first_offset=reply.first_offset,
        last_offset=reply.last_offset,
        first_global_position=reply.first_global_position,
        last_global_position=reply.last_global_position,
    )


def append_to_streams_request(
    appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None
) -> pb.AppendToStreamsRequest:
    request = pb.AppendToStreamsRequest()
    for item in appends:
        part = request.appends.add(
            stream_name=item.stream_name, events=[event_data(e) for e in item.events]
        )
        if item.expected_last_offset is not None:
            part.expected_last_offset = item.expected_last_offset
    if checkpoint is not None:
        request.checkpoint.CopyFrom(
            pb.ConsumerCheckpoint(
                stream_name=checkpoint.stream_name,
                consumer_group=checkpoint.consumer_group,
                offset=checkpoint.offset,
            )
        )
    return request


def with_stream_ids(appends: Sequence[StreamAppend]) -> list[StreamAppend]:
    return [
        StreamAppend(a.stream_name, with_ids(a.events), a.expected_last_offset) for a in appends
    ]


def read_request(
    stream_name: str,
    from_offset: int,
    max_count: int,
    backward: bool,
    from_time: datetime | None,
    event_types: Sequence[str],
) -> pb.ReadStreamRequest:
    request = pb.ReadStreamRequest(
        stream_name=stream_name,
        from_offset=from_offset,
        max_count=max_count,
        backward=backward,
        event_types=list(event_types),
    )
    if from_time is not None:
        request.from_timestamp.CopyFrom(timestamp(from_time))
    return request


def read_result(reply: pb.ReadStreamResponse) -> ReadResult:
    return ReadResult(
        events=[recorded_event(e) for e in reply.events],
        next_offset=reply.next_offset,
        end_of_stream=reply.end_of_stream,
    )


def all_filter(stream_prefixes: Sequence[str], event_types: Sequence[str]) -> pb.AllFilter:
    return pb.AllFilter(stream_prefixes=list(stream_prefixes), event_types=list(event_types))


def read_all_result(reply: pb.ReadAllResponse) -> ReadAllResult:
    return ReadAllResult(
        events=[recorded_event(e) for e in reply.events],
        next_position=reply.next_position,
        end_of_log=reply.end_of_log,
    )


def stream_type(value: int) -> StreamType:
    try:
        return StreamType(value)
    except ValueError:
        return StreamType.UNSPECIFIED


def stream_metadata(reply: pb.GetStreamMetadataResponse) -> StreamMetadata:
    return StreamMetadata(
        stream_name=reply.stream_name,
        stream_type=stream_type(reply.stream_type),
        length=reply.length,
        retained_count=reply.retained_count,
        oldest_offset=reply.oldest_offset,
        newest_offset=reply.newest_offset,
        oldest_event_timestamp=from_timestamp(
            reply.oldest_event_timestamp, reply.HasField("oldest_event_timestamp")
        ),
        newest_event_timestamp=from_timestamp(
            reply.newest_event_timestamp, reply.HasField("newest_event_timestamp")
        ),
        created_at=from_timestamp(reply.created_at, reply.HasField("created_at")),
        pending_count=reply.pending_count,
        in_flight_count=reply.in_flight_count,
        dead_letter_count=reply.dead_letter_count,
    )


def dequeue_request(
    stream_name: str,
    consumer_id: str,
    visibility_timeout: timedelta | None,
    max_messages: int,
    wait_time: timedelta | None,
) -> pb.DequeueRequest:
    request = pb.DequeueRequest(
        stream_name=stream_name, consumer_id=consumer_id, max_messages=max_messages
    )
    if visibility_timeout is not None:
        request.visibility_timeout.CopyFrom(duration(visibility_timeout))
    if wait_time:
        request.wait_time.CopyFrom(duration(wait_time))
    return request


def queue_message(message: pb.QueueMessage) -> QueueMessage:
    return QueueMessage(
        event=recorded_event(message.event),
        delivery_attempt=message.delivery_attempt,
        visible_until=from_timestamp(message.visible_until, message.HasField("visible_until")),
    )


def ack_result(reply: pb.AcknowledgeResponse) -> AckResult:
    return AckResult(
        acknowledged=list(reply.acknowledged),
        failed={f.event_id: f.reason for f in reply.failed},
    )


def nack_request(
    stream_name: str, consumer_id: str, event_id: str, delay: timedelta | None, reason: str
) -> pb.NackRequest:
    request = pb.NackRequest(
        stream_name=stream_name, consumer_id=consumer_id, event_id=event_id, reason=reason
    )
    if delay:
        request.delay.CopyFrom(duration(delay))
    return request


def dead_letter_page(reply: pb.ListDeadLettersResponse) -> DeadLetterPage:
    return DeadLetterPage(
        dead_letters=[
            DeadLetter(
                event=recorded_event(d.event),
                delivery_attempts=d.delivery_attempts,
                reason=d.reason,
                dead_lettered_at=from_timestamp(d.dead_lettered_at, d.HasField("dead_lettered_at")),
            )
            for d in reply.dead_letters
        ],
        next_page_token=reply.next_page_token,
    )


def configuration_message(config: StreamConfiguration) -> pb.StreamConfiguration:
    # The enum by name: protobuf's typed constructor takes "STREAM_TYPE_..." names.
    message = pb.StreamConfiguration(
        stream_type=f"STREAM_TYPE_{config.stream_type.name}",
        retention_max_count=config.retention_max_count,
        max_delivery_attempts=config.max_delivery_attempts,
    )
    if config.retention_max_age is not None:
        message.retention_max_age.CopyFrom(duration(config.retention_max_age))
    if config.default_visibility_timeout is not None:
        message.default_visibility_timeout.CopyFrom(duration(config.default_visibility_timeout))
    return message


def configuration(message: pb.StreamConfiguration) -> StreamConfiguration:
    return StreamConfiguration(
        stream_type=stream_type(message.stream_type),
        retention_max_age=from_duration(
            message.retention_max_age, message.HasField("retention_max_age")
        ),
        retention_max_count=message.retention_max_count,
        max_delivery_attempts=message.max_delivery_attempts,
        default_visibility_timeout=from_duration(
            message.default_visibility_timeout, message.HasField("default_visibility_timeout")
        ),
    )


def stream_page(reply: pb.ListStreamsResponse) -> StreamPage:
    return StreamPage(
        streams=[
            StreamSummary(s.stream_name, stream_type(s.stream_type), s.length)
            for s in reply.streams
        ],
        next_page_token=reply.next_page_token,
    )


def subscribe_to_stream_request(
    stream_name: str,
    *,
    from_offset: int | None,
    from_end: bool,
    consumer_group: str | None,
    from_time: datetime | None,
    event_types: Sequence[str],
) -> pb.SubscribeToStreamRequest:
    request = pb.SubscribeToStreamRequest(stream_name=stream_name, event_types=list(event_types))
    if from_offset is not None:
        request.from_offset = from_offset
    elif from_end:
        request.from_end = True
    elif consumer_group is not None:
        request.consumer_group = consumer_group
    if from_time is not None:
        request.from_timestamp.CopyFrom(timestamp(from_time))
    return request


def subscribe_to_all_request(
    *,
    from_position: int | None,
    from_end: bool,
    consumer_group: str | None,
    stream_prefixes: Sequence[str],
    event_types: Sequence[str],
    checkpoint_interval: int,
) -> pb.SubscribeToAllRequest:
    request = pb.SubscribeToAllRequest(
        filter=all_filter(stream_prefixes, event_types), checkpoint_interval=checkpoint_interval
    )
    if from_position is not None:
        request.from_position = from_position
    elif from_end:
        request.from_end = True
    elif consumer_group is not None:
        request.consumer_group = consumer_group
    return request

"""Every response message, built from storage records in one place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from server.consume import Batch, ConsumeItem
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.subscriptions import AllCheckpoint, CaughtUp, SubscriptionItem
from storage.records import (
    AckFailure,
    AckResult,
    AllPage,
    AppendResult,
    DeadLetterPage,
    EnqueueResult,
    QueueMessage,
    ReadResult,
    RecordedEvent,
    StreamConfiguration,
    StreamMetadata,
    StreamPage,
    StreamType,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(target: Timestamp, value: datetime) -> None:
    """Write ``value`` into a Timestamp field in place. Timestamp.FromDatetime costs
    about 8x this arithmetic, and reads convert a timestamp per event."""
    since = value - _EPOCH
    target.seconds = since.days * 86_400 + since.seconds
    target.nanos = since.microseconds * 1000


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    set_timestamp(result, value)
    return result


def optional_timestamp(value: datetime | None) -> Timestamp | None:
    return None if value is None else timestamp(value)


def duration(value: timedelta) -> Duration:
    result = Duration()
    result.FromTimedelta(value)
    return result


def stream_type(value: StreamType | None) -> str:
    """The proto enum value's name (the storage enum mirrors the proto's numbers)."""
    return pb.StreamType.Name(0 if value is None else int(value))


# -- events ------------------------------------------------------------------------------
def fill_event(message: pb.Event, record: RecordedEvent) -> pb.Event:
    """Write ``record`` into an empty ``message`` in place.

    Reads build a thousand events per page: setting fields on a message made by
    ``repeated.add()`` avoids building each Event and then copying it into the
    response (about 40% of the conversion cost)."""
    message.stream_name = record.stream_name
    message.offset = record.offset
    message.event_id = str(record.event_id)
    message.event_type = record.event_type
    message.data = record.data
    message.content_type = record.content_type
    set_timestamp(message.timestamp, record.timestamp)
    # Optional fields only when set: an empty map or string still costs a call.
    if record.metadata:
        message.metadata.update(record.metadata)
    if record.correlation_id:
        message.correlation_id = record.correlation_id
    if record.causation_id:
        message.causation_id = record.causation_id
    if record.global_position:
        message.global_position = record.global_position
    if record.ordering_key:
        message.ordering_key = record.ordering_key
    return message


def event(record: RecordedEvent) -> pb.Event:
    return fill_event(pb.Event(), record)


def add_events(target: Any, records: Iterable[RecordedEvent]) -> None:
    """Append ``records`` to a repeated Event field."""
    add = target.add
    for record in records:
        fill_event(add(), record)


# -- persistent streams ---------------------------------------------------------------------
def append_response(result: AppendResult) -> pb.AppendToStreamResponse:
    return pb.AppendToStreamResponse(
        first_offset=result.first_offset,
        last_offset=result.last_offset,
        first_global_position=result.first_global_position,
        last_global_position=result.last_global_position,
    )


def append_streams_response(results: Sequence[AppendResult]) -> pb.AppendToStreamsResponse:
    return pb.AppendToStreamsResponse(results=[append_response(r) for r in results])


def read_all_response(page: AllPage) -> pb.ReadAllResponse:
    response = pb.ReadAllResponse(next_position=page.next_position, end_of_log=page.end_of_log)
    add_events(response.events, page.events)
    return response


def read_response(result: ReadResult) -> pb.ReadStreamResponse:
    response = pb.ReadStreamResponse(
        next_offset=result.next_offset, end_of_stream=result.end_of_stream
    )
    add_events(response.events, result.events)
    return response


def metadata_response(meta: StreamMetadata) -> pb.GetStreamMetadataResponse:
    return pb.GetStreamMetadataResponse(
        stream_name=meta.stream_name,
        stream_type=stream_type(meta.stream_type),
        length=meta.length,
        retained_count=meta.retained_count,
        oldest_offset=meta.oldest_offset,
        newest_offset=meta.newest_offset,
        oldest_event_timestamp=optional_timestamp(meta.oldest_event_timestamp),
        newest_event_timestamp=optional_timestamp(meta.newest_event_timestamp),
        created_at=timestamp(meta.created_at),
        pending_count=meta.pending_count,
        in_flight_count=meta.in_flight_count,
        dead_letter_count=meta.dead_letter_count,
        oldest_message_enqueued_at=optional_timestamp(meta.oldest_message_enqueued_at),
    )


# -- queues -------------------------------------------------------------------------------------
def enqueue_response(result: EnqueueResult) -> pb.EnqueueResponse:
    return pb.EnqueueResponse(
        event_ids=[str(i) for i in result.event_ids],
        duplicate_event_ids=[str(i) for i in result.duplicate_event_ids],
    )


def fill_queue_message(item: pb.QueueMessage, message: QueueMessage) -> pb.QueueMessage:
    """Write ``message`` into an empty QueueMessage in place."""
    item.delivery_attempt = message.delivery_attempt
    fill_event(item.event, message.event)
    set_timestamp(item.visible_until, message.visible_until)
    item.receipt = str(message.receipt)
    return item


def dequeue_response(messages: Sequence[QueueMessage]) -> pb.DequeueResponse:
    """Filled in place (no message is built and then copied)."""
    response = pb.DequeueResponse()
    add = response.messages.add
    for message in messages:
        fill_queue_message(add(), message)
    return response


def _ack_failures(failures: Sequence[AckFailure]) -> list[pb.AckFailure]:
    return [
        pb.AckFailure(
            event_id=str(f.event_id),
            reason=f.reason.value,
            receipt="" if f.receipt is None else str(f.receipt),
        )
        for f in failures
    ]


def acknowledge_response(result: AckResult) -> pb.AcknowledgeResponse:
    return pb.AcknowledgeResponse(
        acknowledged=[str(i) for i in result.acknowledged],
        failed=_ack_failures(result.failed),
    )


def consume_response(item: ConsumeItem) -> pb.ConsumeResponse:
    """A delivery (one message or a batch) on a Consume stream, or the answer to an
    ack, nack or extend (a nack's or an extend's outcome expressed as the AckResult
    of its message)."""
    response = pb.ConsumeResponse()
    if isinstance(item, QueueMessage):
        fill_queue_message(response.message, item)
        return response
    if isinstance(item, Batch):
        add = response.batch.messages.add
        for message in item.messages:
            fill_queue_message(add(), message)
        return response
    answer = response.result
    answer.request_id = item.request_id
    answer.succeeded.extend(str(i) for i in item.result.acknowledged)
    answer.failed.extend(_ack_failures(item.result.failed))
    if item.visible_until is not None:
        set_timestamp(answer.visible_until, item.visible_until)
    return response


def dead_letters_response(page: DeadLetterPage) -> pb.ListDeadLettersResponse:
    response = pb.ListDeadLettersResponse(next_page_token=page.next_page_token)
    add = response.dead_letters.add
    for letter in page.dead_letters:
        item = add(delivery_attempts=letter.delivery_attempts, reason=letter.reason)
        fill_event(item.event, letter.event)
        set_timestamp(item.dead_lettered_at, letter.dead_lettered_at)
    return response


# -- administration ---------------------------------------------------------------------------
def configuration(config: StreamConfiguration) -> pb.StreamConfiguration:
    return pb.StreamConfiguration(
        stream_type=stream_type(config.stream_type),
        retention_max_age=(
            None if config.retention_max_age is None else duration(config.retention_max_age)
        ),
        retention_max_count=config.retention_max_count or 0,
        max_delivery_attempts=config.max_delivery_attempts,
        default_visibility_timeout=duration(config.default_visibility_timeout),
        retry_initial_delay=duration(config.retry_initial_delay),
        retry_max_delay=duration(config.retry_max_delay),
        retry_multiplier=config.retry_multiplier,
        deduplication_window=duration(config.deduplication_window),
    )


def list_streams_response(page: StreamPage) -> pb.ListStreamsResponse:
    return pb.ListStreamsResponse(
        streams=[
            pb.StreamSummary(
                stream_name=s.stream_name, stream_type=stream_type(s.stream_type), length=s.length
            )
            for s in page.streams
        ],
        next_page_token=page.next_page_token,
    )


# -- subscriptions -------------------------------------------------------------------------
def subscription_response(item: SubscriptionItem) -> pb.SubscribeToStreamResponse:
    response = pb.SubscribeToStreamResponse()
    if isinstance(item, CaughtUp):
        response.caught_up.next_offset = item.position
    elif isinstance(item, RecordedEvent):
        fill_event(response.event, item)
    else:
        raise AssertionError("a stream subscription sends no checkpoints")
    return response


def all_subscription_response(item: SubscriptionItem) -> pb.SubscribeToAllResponse:
    response = pb.SubscribeToAllResponse()
    if isinstance(item, CaughtUp):
        response.caught_up.next_position = item.position
    elif isinstance(item, AllCheckpoint):
        response.checkpoint.position = item.position
    else:
        fill_event(response.event, item)
    return response

"""Protobuf messages <-> the dataclasses of :mod:`eventstreaming_client.models`.
Both clients build their requests and read their responses through here."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import (
    DEFAULT_DEDUPLICATION_WINDOW,
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    DEFAULT_RETRY_MULTIPLIER,
    DEFAULT_VISIBILITY_TIMEOUT,
    AckFailure,
    AckResult,
    AppendResult,
    ConsumerCheckpoint,
    DeadLetter,
    DeadLetterPage,
    EnqueueResult,
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

#: The most ids (or receipts) one acknowledgement takes.
MAX_ACK_IDS = 1000


def duration(value: timedelta) -> Duration:
    result = Duration()
    result.FromTimedelta(value)
    return result


def check_timedelta(name: str, value: object, *, optional: bool = True) -> timedelta | None:
    """``value`` when it is a timedelta that is not negative (or None, when that is
    allowed); a clear error otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, timedelta):
        wanted = "a datetime.timedelta or None" if optional else "a datetime.timedelta"
        raise TypeError(f"{name} must be {wanted}, not {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative (got {value})")
    return value


def check_positive(name: str, value: object) -> timedelta:
    checked = check_timedelta(name, value, optional=False)
    assert checked is not None
    if checked <= timedelta(0):
        raise ValueError(f"{name} must be more than 0 (got {checked})")
    return checked


def check_ids(name: str, values: object) -> list[str]:
    """A list of ids or receipts; a lone string is refused (it would be taken for
    a sequence of one-character ids)."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a sequence of strings, not one string: use [{name[:-1]}]")
    if not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of strings, not {type(values).__name__}")
    found = [str(item) for item in values]
    if any(not item for item in found):
        raise ValueError(f"{name} must not contain an empty string")
    return found


def message_target(
    event_id: str | None, receipt: str | None, *, what: str = "a message"
) -> tuple[str, str]:
    """(event_id, receipt) of a request that names one message by one of them."""
    if (event_id is None or event_id == "") == (receipt is None or receipt == ""):
        raise ValueError(f"name {what} by event_id or by receipt (one of them, not both)")
    if event_id is not None and not isinstance(event_id, str):
        raise TypeError(f"event_id must be a string, not {type(event_id).__name__}")
    if receipt is not None and not isinstance(receipt, str):
        raise TypeError(f"receipt must be a string, not {type(receipt).__name__}")
    return event_id or "", receipt or ""


def ack_targets(event_ids: object, receipts: object) -> tuple[list[str], list[str]]:
    """The event ids or the receipts of an acknowledgement (one kind, 1 or more)."""
    ids, handles = check_ids("event_ids", event_ids), check_ids("receipts", receipts)
    if bool(ids) == bool(handles):
        raise ValueError("acknowledge by event_ids or by receipts (one of them, not both)")
    return ids, handles


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
            item = dataclasses.replace(item, event_id=uuid.uuid4())
        result.append(item)
    return result


def event_data(item: NewEvent) -> pb.EventData:
    if not isinstance(item, NewEvent):
        raise TypeError(f"events must be NewEvent values, not {type(item).__name__}")
    return pb.EventData(
        event_id="" if item.event_id is None else str(item.event_id),
        event_type=item.event_type,
        data=item.encoded_data(),
        content_type=item.content_type,
        metadata=dict(item.metadata),
        correlation_id=item.correlation_id,
        causation_id=item.causation_id,
        ordering_key=item.ordering_key,
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
        ordering_key=message.ordering_key,
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
        oldest_message_enqueued_at=from_timestamp(
            reply.oldest_message_enqueued_at, reply.HasField("oldest_message_enqueued_at")
        ),
    )


def enqueue_request(
    stream_name: str,
    events: Sequence[NewEvent],
    delay: timedelta | None,
    deliver_at: datetime | None,
) -> pb.EnqueueRequest:
    request = pb.EnqueueRequest(stream_name=stream_name, events=[event_data(e) for e in events])
    check_timedelta("delay", delay)
    if deliver_at is not None:
        if delay is not None:
            raise ValueError("give delay or deliver_at, not both")
        if not isinstance(deliver_at, datetime):
            raise TypeError(
                f"deliver_at must be a datetime.datetime, not {type(deliver_at).__name__}"
            )
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise ValueError(
                "deliver_at must be an aware datetime (e.g. datetime.now(UTC) + ...): "
                "a naive one would be read as UTC"
            )
        request.deliver_at.CopyFrom(timestamp(deliver_at))
    elif delay is not None:
        request.delay.CopyFrom(duration(delay))
    return request


def enqueue_result(reply: pb.EnqueueResponse) -> EnqueueResult:
    return EnqueueResult(list(reply.event_ids), list(reply.duplicate_event_ids))


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
        receipt=message.receipt,
    )


def ack_result(reply: pb.AcknowledgeResponse | pb.ConsumeResult) -> AckResult:
    """The outcome of an acknowledgement (or of a Consume stream's ack, nack or
    extend), message by message."""
    succeeded = reply.acknowledged if isinstance(reply, pb.AcknowledgeResponse) else reply.succeeded
    failures = [AckFailure(f.event_id, f.reason, f.receipt) for f in reply.failed]
    return AckResult(
        acknowledged=list(succeeded),
        failed={f.event_id: f.reason for f in failures},
        failures=failures,
    )


def merge_ack_results(results: Sequence[AckResult]) -> AckResult:
    if len(results) == 1:
        return results[0]
    failures = [f for r in results for f in r.failures]
    return AckResult(
        acknowledged=[i for r in results for i in r.acknowledged],
        failed={f.event_id: f.reason for f in failures},
        failures=failures,
    )


def acknowledge_request(
    stream_name: str, consumer_id: str, event_ids: object, receipts: object
) -> pb.AcknowledgeRequest:
    ids, handles = ack_targets(event_ids, receipts)
    return pb.AcknowledgeRequest(
        stream_name=stream_name, consumer_id=consumer_id, event_ids=ids, receipts=handles
    )


def nack_request(
    stream_name: str,
    consumer_id: str,
    event_id: str | None,
    receipt: str | None,
    delay: timedelta | None,
    reason: str,
) -> pb.NackRequest:
    """A Nack. ``delay`` None sends none (the stream's retry policy decides);
    ``timedelta(0)`` is sent as an explicit zero: visible again at once."""
    event_id, receipt = message_target(event_id, receipt)
    request = pb.NackRequest(
        stream_name=stream_name,
        consumer_id=consumer_id,
        event_id=event_id,
        receipt=receipt,
        reason=reason,
    )
    if check_timedelta("delay", delay) is not None:
        assert delay is not None
        request.delay.CopyFrom(duration(delay))
    return request


def extend_request(
    stream_name: str,
    consumer_id: str,
    event_id: str | None,
    receipt: str | None,
    visibility_timeout: timedelta | None,
) -> pb.ExtendVisibilityRequest:
    event_id, receipt = message_target(event_id, receipt)
    return pb.ExtendVisibilityRequest(
        stream_name=stream_name,
        consumer_id=consumer_id,
        event_id=event_id,
        receipt=receipt,
        visibility_timeout=duration(check_positive("visibility_timeout", visibility_timeout)),
    )


#: Consume: the most messages a stream holds unacknowledged, and per response.
MAX_OUTSTANDING = 1000
MAX_BATCH = 100


def consume_start(
    stream_name: str,
    consumer_id: str,
    visibility_timeout: timedelta | None,
    max_outstanding: int,
    max_batch: int,
) -> pb.ConsumeRequest:
    if not consumer_id or not isinstance(consumer_id, str):
        raise ValueError("consumer_id must be a non-empty string")
    if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int):
        raise TypeError("max_outstanding must be an int")
    if not 1 <= max_outstanding <= MAX_OUTSTANDING:
        raise ValueError(f"max_outstanding must be between 1 and {MAX_OUTSTANDING}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int):
        raise TypeError("max_batch must be an int")
    if not 0 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be between 0 and {MAX_BATCH} (0 or 1: one at a time)")
    start = pb.ConsumeStart(
        stream_name=stream_name,
        consumer_id=consumer_id,
        max_outstanding=max_outstanding,
        max_batch=max_batch,
    )
    if visibility_timeout is not None:
        start.visibility_timeout.CopyFrom(
            duration(check_positive("visibility_timeout", visibility_timeout))
        )
    return pb.ConsumeRequest(start=start)


def ack_chunks(event_ids: object, receipts: object) -> list[tuple[list[str], list[str]]]:
    """The ids or receipts of an acknowledgement, a thousand at most per part (the
    most one request takes)."""
    ids, handles = ack_targets(event_ids, receipts)
    return [
        (ids[at : at + MAX_ACK_IDS], handles[at : at + MAX_ACK_IDS])
        for at in range(0, max(len(ids), len(handles)), MAX_ACK_IDS)
    ]


def consume_ack(request_id: int, *, ids: list[str], receipts: list[str]) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(
        ack=pb.ConsumeAck(request_id=request_id, event_ids=ids, receipts=receipts)
    )


def ack_named(
    messages: Sequence[QueueMessage], event_ids: object, receipts: object
) -> tuple[list[str], list[str]]:
    """The ids and receipts an acknowledgement names: ``messages`` by their receipts
    (by id when a message has none), added to ``event_ids`` / ``receipts``."""
    ids, handles = check_ids("event_ids", event_ids), check_ids("receipts", receipts)
    for message in messages:
        if not isinstance(message, QueueMessage):
            raise TypeError(
                f"messages must be QueueMessage values, not {type(message).__name__} "
                "(pass several as ack(*messages), ids as event_ids=)"
            )
        if message.receipt:
            handles.append(message.receipt)
        else:
            ids.append(message.event_id)
    return ids, handles


def named_message(
    message: QueueMessage | None, event_id: str | None, receipt: str | None
) -> tuple[str | None, str | None]:
    """The message a nack or extend names: a QueueMessage (by its receipt), or an
    event id, or a receipt."""
    if message is None:
        return event_id, receipt
    if event_id is not None or receipt is not None:
        raise ValueError("name the message once: a QueueMessage, an event_id or a receipt")
    if not isinstance(message, QueueMessage):
        raise TypeError(f"message must be a QueueMessage, not {type(message).__name__}")
    return (None, message.receipt) if message.receipt else (message.event_id, None)


def consume_nack(
    request_id: int,
    event_id: str | None,
    receipt: str | None,
    delay: timedelta | None,
    reason: str,
) -> pb.ConsumeRequest:
    """As :func:`nack_request`: ``timedelta(0)`` is an explicit zero (at once), None
    leaves the delay to the stream's retry policy."""
    event_id, receipt = message_target(event_id, receipt)
    nack = pb.ConsumeNack(request_id=request_id, event_id=event_id, receipt=receipt, reason=reason)
    if check_timedelta("delay", delay) is not None:
        assert delay is not None
        nack.delay.CopyFrom(duration(delay))
    return pb.ConsumeRequest(nack=nack)


def consume_extend(
    request_id: int, event_id: str | None, receipt: str | None, visibility_timeout: timedelta
) -> pb.ConsumeRequest:
    event_id, receipt = message_target(event_id, receipt)
    return pb.ConsumeRequest(
        extend=pb.ConsumeExtend(
            request_id=request_id,
            event_id=event_id,
            receipt=receipt,
            visibility_timeout=duration(check_positive("visibility_timeout", visibility_timeout)),
        )
    )


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
    """Every setting of ``config``, each sent explicitly: ConfigureStream replaces
    the whole stored configuration, and an absent duration means the server's
    default (for ``deduplication_window``, 5 minutes, where 0 means another thing)."""
    if not isinstance(config, StreamConfiguration):
        raise TypeError(f"configuration must be a StreamConfiguration, not {type(config).__name__}")
    if not isinstance(config.stream_type, StreamType):
        raise TypeError("stream_type must be a StreamType")
    # The enum by name: protobuf's typed constructor takes "STREAM_TYPE_..." names.
    message = pb.StreamConfiguration(
        stream_type=f"STREAM_TYPE_{config.stream_type.name}",
        retention_max_count=config.retention_max_count,
        max_delivery_attempts=config.max_delivery_attempts,
        retry_multiplier=config.retry_multiplier,
    )
    durations = {
        "retention_max_age": config.retention_max_age,
        "default_visibility_timeout": config.default_visibility_timeout,
        "retry_initial_delay": config.retry_initial_delay,
        "retry_max_delay": config.retry_max_delay,
        "deduplication_window": config.deduplication_window,
    }
    for name, value in durations.items():
        if check_timedelta(name, value) is not None:
            assert value is not None
            getattr(message, name).CopyFrom(duration(value))
    return message


def configuration(message: pb.StreamConfiguration) -> StreamConfiguration:
    """A stored configuration (the server fills in every default; a missing
    duration is read as the default the server would apply)."""

    def length(name: str, default: timedelta) -> timedelta:
        return getattr(message, name).ToTimedelta() if message.HasField(name) else default

    return StreamConfiguration(
        stream_type=stream_type(message.stream_type),
        retention_max_age=from_duration(
            message.retention_max_age, message.HasField("retention_max_age")
        ),
        retention_max_count=message.retention_max_count,
        max_delivery_attempts=message.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS,
        default_visibility_timeout=length("default_visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT),
        retry_initial_delay=length("retry_initial_delay", timedelta(0)),
        retry_max_delay=length("retry_max_delay", timedelta(0)),
        retry_multiplier=message.retry_multiplier or DEFAULT_RETRY_MULTIPLIER,
        deduplication_window=length("deduplication_window", DEFAULT_DEDUPLICATION_WINDOW),
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

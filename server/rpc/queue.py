"""Queue RPCs (Enqueue, Dequeue, Acknowledge, Nack, ExtendVisibility, ListDeadLetters,
RedriveDeadLetters) and stream configuration (ConfigureStream, GetStreamConfiguration)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from google.protobuf.duration_pb2 import Duration

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase
from storage.records import (
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT,
    DeadLetter,
    QueueMessage,
    StreamConfiguration,
    StreamType,
)

MAX_VISIBILITY_TIMEOUT = timedelta(hours=12)
MAX_NACK_DELAY = timedelta(hours=12)
MAX_WAIT_TIME = timedelta(seconds=20)
MAX_MESSAGES = 100
MAX_ACK_IDS = 1000
MAX_REDRIVE_IDS = 1000
MAX_REASON_LENGTH = 1000
MAX_DELIVERY_ATTEMPTS = 1000
MAX_RETENTION_AGE = timedelta(days=36500)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _consumer_id(value: str) -> str:
    return validation.identifier(value, "consumer_id")


def _event_id(value: str) -> UUID:
    if not value:
        raise validation.InvalidArgument("event_id", "is required")
    return validation.event_id(value, "event_id")


def _visibility_timeout(value: Duration, field: str) -> timedelta:
    return validation.duration(value, field, maximum=MAX_VISIBILITY_TIMEOUT, allow_zero=False)


def _wait_time(request: pb.DequeueRequest) -> timedelta:
    if not request.HasField("wait_time"):
        return timedelta(0)
    # Longer waits are not an error: the contract cuts them to the cap.
    wait = validation.duration(request.wait_time, "wait_time", maximum=timedelta.max)
    return min(wait, MAX_WAIT_TIME)


def _max_messages(value: int) -> int:
    if value < 0:
        raise validation.InvalidArgument("max_messages", f"is {value}; must be >= 0 (0 means 1)")
    return min(value or 1, MAX_MESSAGES)


def _reason(value: str) -> str:
    if len(value) > MAX_REASON_LENGTH:
        raise validation.InvalidArgument(
            "reason", f"is {len(value)} characters long; at most {MAX_REASON_LENGTH} allowed"
        )
    if "\x00" in value:
        raise validation.InvalidArgument("reason", "must not contain the NUL character")
    return value


def _add_queue_messages(response: pb.DequeueResponse, messages: Sequence[QueueMessage]) -> None:
    """Fill the response in place (no message is built and then copied)."""
    add = response.messages.add
    for message in messages:
        item = add(delivery_attempt=message.delivery_attempt)
        convert.fill_event(item.event, message.event)
        since = message.visible_until - _EPOCH
        item.visible_until.seconds = since.days * 86_400 + since.seconds
        item.visible_until.nanos = since.microseconds * 1000


def _dead_letter(letter: DeadLetter) -> pb.DeadLetter:
    return pb.DeadLetter(
        event=convert.event(letter.event),
        delivery_attempts=letter.delivery_attempts,
        reason=letter.reason,
        dead_lettered_at=convert.timestamp(letter.dead_lettered_at),
    )


def stream_configuration(
    message: pb.StreamConfiguration, field: str = "configuration"
) -> StreamConfiguration:
    """Validate a StreamConfiguration; zero values become the defaults."""
    if message.stream_type == pb.STREAM_TYPE_UNSPECIFIED:
        stream_type: StreamType | None = None
    elif message.stream_type in (pb.STREAM_TYPE_PERSISTENT, pb.STREAM_TYPE_EPHEMERAL):
        stream_type = StreamType(message.stream_type)
    else:
        raise validation.InvalidArgument(
            f"{field}.stream_type",
            f"{message.stream_type} is not a stream type: use STREAM_TYPE_PERSISTENT (1), "
            "STREAM_TYPE_EPHEMERAL (2) or STREAM_TYPE_UNSPECIFIED (0, keep the current type)",
        )
    max_age = None
    if message.HasField("retention_max_age"):
        max_age = (
            validation.duration(
                message.retention_max_age,
                f"{field}.retention_max_age",
                maximum=MAX_RETENTION_AGE,
            )
            or None
        )
    if message.retention_max_count < 0:
        raise validation.InvalidArgument(
            f"{field}.retention_max_count",
            f"is {message.retention_max_count}; must be >= 0 (0 means no count limit)",
        )
    attempts = message.max_delivery_attempts
    if not 0 <= attempts <= MAX_DELIVERY_ATTEMPTS:
        raise validation.InvalidArgument(
            f"{field}.max_delivery_attempts",
            f"is {attempts}; must be between 1 and {MAX_DELIVERY_ATTEMPTS} "
            f"(0 means {DEFAULT_MAX_DELIVERY_ATTEMPTS})",
        )
    visibility = DEFAULT_VISIBILITY_TIMEOUT
    if message.HasField("default_visibility_timeout"):
        visibility = (
            validation.duration(
                message.default_visibility_timeout,
                f"{field}.default_visibility_timeout",
                maximum=MAX_VISIBILITY_TIMEOUT,
            )
            or DEFAULT_VISIBILITY_TIMEOUT
        )
    return StreamConfiguration(
        stream_type=stream_type,
        retention_max_age=max_age,
        retention_max_count=message.retention_max_count or None,
        max_delivery_attempts=attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS,
        default_visibility_timeout=visibility,
    )


def configuration_message(config: StreamConfiguration) -> pb.StreamConfiguration:
    return pb.StreamConfiguration(
        stream_type=convert.stream_type(config.stream_type),
        retention_max_age=(
            None if config.retention_max_age is None else convert.duration(config.retention_max_age)
        ),
        retention_max_count=config.retention_max_count or 0,
        max_delivery_attempts=config.max_delivery_attempts,
        default_visibility_timeout=convert.duration(config.default_visibility_timeout),
    )


class QueueRpcs(RpcBase):
    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.EnqueueResponse:
        """Add messages to the end of a queue, atomically."""
        name = validation.stream_name(request.stream_name)
        events = validation.new_events(request.events)
        ids = await self.store.enqueue(name, events)
        return pb.EnqueueResponse(event_ids=[str(i) for i in ids])

    async def Dequeue(self, request: pb.DequeueRequest, context: Context) -> pb.DequeueResponse:
        """Lease visible messages, oldest first, waiting up to wait_time for one."""
        name = validation.stream_name(request.stream_name)
        consumer = _consumer_id(request.consumer_id)
        visibility = None
        if request.HasField("visibility_timeout"):
            visibility = _visibility_timeout(request.visibility_timeout, "visibility_timeout")
        max_messages = _max_messages(request.max_messages)
        wait = _wait_time(request)
        messages = await self.store.dequeue(name, consumer, visibility, max_messages, wait)
        response = pb.DequeueResponse()
        _add_queue_messages(response, messages)
        return response

    async def Acknowledge(
        self, request: pb.AcknowledgeRequest, context: Context
    ) -> pb.AcknowledgeResponse:
        """Delete held messages; the others are reported one by one."""
        name = validation.stream_name(request.stream_name)
        consumer = _consumer_id(request.consumer_id)
        ids = validation.event_ids(request.event_ids, "event_ids", minimum=1, maximum=MAX_ACK_IDS)
        result = await self.store.acknowledge(name, consumer, ids)
        return pb.AcknowledgeResponse(
            acknowledged=[str(i) for i in result.acknowledged],
            failed=[
                pb.AckFailure(event_id=str(f.event_id), reason=f.reason.value)
                for f in result.failed
            ],
        )

    async def Nack(self, request: pb.NackRequest, context: Context) -> pb.NackResponse:
        """Give a held message back, visible again after delay."""
        name = validation.stream_name(request.stream_name)
        consumer = _consumer_id(request.consumer_id)
        event_id = _event_id(request.event_id)
        delay = timedelta(0)
        if request.HasField("delay"):
            delay = validation.duration(request.delay, "delay", maximum=MAX_NACK_DELAY)
        reason = _reason(request.reason)
        await self.store.nack(name, consumer, event_id, delay, reason)
        return pb.NackResponse()

    async def ExtendVisibility(
        self, request: pb.ExtendVisibilityRequest, context: Context
    ) -> pb.ExtendVisibilityResponse:
        """Set a held message's lease to end visibility_timeout from now."""
        name = validation.stream_name(request.stream_name)
        consumer = _consumer_id(request.consumer_id)
        event_id = _event_id(request.event_id)
        if not request.HasField("visibility_timeout"):
            raise validation.InvalidArgument("visibility_timeout", "is required")
        timeout = _visibility_timeout(request.visibility_timeout, "visibility_timeout")
        visible_until = await self.store.extend_visibility(name, consumer, event_id, timeout)
        return pb.ExtendVisibilityResponse(visible_until=convert.timestamp(visible_until))

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        """One page of the dead-letter queue, oldest first."""
        name = validation.stream_name(request.stream_name)
        max_count = validation.page_size(request.max_count, "max_count")
        page = await self.store.list_dead_letters(name, max_count, request.page_token)
        return pb.ListDeadLettersResponse(
            dead_letters=[_dead_letter(d) for d in page.dead_letters],
            next_page_token=page.next_page_token,
        )

    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: Context
    ) -> pb.RedriveDeadLettersResponse:
        """Put some (or all) dead letters back at the end of the queue."""
        name = validation.stream_name(request.stream_name)
        ids = validation.event_ids(
            request.event_ids, "event_ids", minimum=0, maximum=MAX_REDRIVE_IDS
        )
        count = await self.store.redrive_dead_letters(name, ids)
        return pb.RedriveDeadLettersResponse(redriven_count=count)

    async def ConfigureStream(
        self, request: pb.ConfigureStreamRequest, context: Context
    ) -> pb.ConfigureStreamResponse:
        """Create a stream or replace its configuration."""
        name = validation.stream_name(request.stream_name)
        config = stream_configuration(request.configuration)
        stored = await self.store.configure_stream(name, config)
        return pb.ConfigureStreamResponse(configuration=configuration_message(stored))

    async def GetStreamConfiguration(
        self, request: pb.GetStreamConfigurationRequest, context: Context
    ) -> pb.GetStreamConfigurationResponse:
        """A stream's configuration, defaults filled in."""
        name = validation.stream_name(request.stream_name)
        config = await self.store.get_stream_configuration(name)
        return pb.GetStreamConfigurationResponse(configuration=configuration_message(config))

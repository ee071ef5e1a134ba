"""Frozen records passed between the server and the storage backends."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, TypeAlias
from uuid import UUID

from storage.receipts import Receipt

#: A stream name: 1-200 characters of A-Z a-z 0-9 . _ : -, starting with a letter or
#: a digit (so no name can start with "$", which is kept for names of the service's own).
STREAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", re.ASCII)
JSON_CONTENT_TYPE = "application/json"
#: The reserved name of the global log in consumer-group calls (no stream name can
#: start with "$").
ALL_STREAM = "$all"
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
DEFAULT_VISIBILITY_TIMEOUT = timedelta(seconds=30)
#: How long a queue remembers an enqueued id (StreamConfiguration.deduplication_window).
DEFAULT_DEDUPLICATION_WINDOW = timedelta(minutes=5)
#: Growth of the retry delay from one delivery to the next, unless configured.
DEFAULT_RETRY_MULTIPLIER = 2.0


class StreamType(enum.IntEnum):
    """What a stream is; the values match the proto's StreamType."""

    PERSISTENT = 1
    EPHEMERAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def with_article(self) -> str:
        """The label with its indefinite article: "a persistent", "an ephemeral"."""
        return f"{'an' if self.label[0] in 'aeiou' else 'a'} {self.label}"


def payload_size(data: bytes, metadata: Mapping[str, str]) -> int:
    """The bytes of an event that page budgets count: its data and its metadata."""
    size = len(data)
    for key, value in metadata.items():
        size += len(key) + len(value)
    return size


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write; already validated (JSON parsed, id assigned)."""

    event_id: UUID
    event_type: str
    data: bytes
    content_type: str = JSON_CONTENT_TYPE
    metadata: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    causation_id: str = ""
    #: Queues: messages of one non-empty key are delivered one at a time, in order.
    ordering_key: str = ""

    @property
    def size(self) -> int:
        """Bytes it adds to a response: the payload and the metadata (what page
        budgets count; ids, names and timestamps are small and bounded)."""
        return payload_size(self.data, self.metadata)

    def recorded(
        self, stream_name: str, offset: int, timestamp: datetime, global_position: int = 0
    ) -> RecordedEvent:
        """This event as stored at ``offset`` of ``stream_name`` (and at
        ``global_position`` of the global log, for a persistent stream)."""
        return RecordedEvent(
            stream_name=stream_name,
            offset=offset,
            event_id=self.event_id,
            event_type=self.event_type,
            data=self.data,
            content_type=self.content_type,
            metadata=dict(self.metadata),
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            timestamp=timestamp,
            global_position=global_position,
            ordering_key=self.ordering_key,
        )


class RecordedEvent(NamedTuple):
    """An event as stored in a stream (or a message as stored in a queue).

    A named tuple rather than a frozen dataclass: reads build thousands per page,
    and a tuple is built in a fifth of the time, as immutable."""

    stream_name: str
    offset: int
    event_id: UUID
    event_type: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str]
    correlation_id: str
    causation_id: str
    timestamp: datetime
    #: Its place in the global log (1 for the first event ever appended); 0 for
    #: queue messages.
    global_position: int = 0
    ordering_key: str = ""

    @property
    def size(self) -> int:
        """Bytes it adds to a response (see :func:`payload_size`)."""
        return payload_size(self.data, self.metadata)


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_offset: int
    last_offset: int
    first_global_position: int = 0
    last_global_position: int = 0


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """One stream's part of an atomic append to several streams."""

    stream_name: str
    events: Sequence[NewEvent]
    expected_last_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumerCheckpoint:
    """A consumer group's offset on a log (or position on ALL_STREAM), committed in
    the same transaction as the appends it goes with."""

    stream_name: str
    consumer_group: str
    offset: int


@dataclass(frozen=True, slots=True)
class AllFilter:
    """Which events of the global log a read or subscription wants; empty: all."""

    stream_prefixes: tuple[str, ...] = ()
    event_types: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.stream_prefixes and not self.event_types

    def matches(self, event: RecordedEvent) -> bool:
        if self.event_types and event.event_type not in self.event_types:
            return False
        return not self.stream_prefixes or event.stream_name.startswith(self.stream_prefixes)


NO_ALL_FILTER = AllFilter()


@dataclass(frozen=True, slots=True)
class AllPage:
    """A page of the global log. ``next_position`` is where to continue: forward,
    one past the last position examined; backward, one below it (0 at the start)."""

    events: tuple[RecordedEvent, ...]
    next_position: int
    end_of_log: bool


@dataclass(frozen=True, slots=True)
class ReadFilter:
    """Replay options shared by ReadStream and SubscribeToStream."""

    from_timestamp: datetime | None = None
    event_types: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return self.from_timestamp is None and not self.event_types

    def matches(self, event: RecordedEvent) -> bool:
        if self.from_timestamp is not None and event.timestamp < self.from_timestamp:
            return False
        return not self.event_types or event.event_type in self.event_types


NO_FILTER = ReadFilter()


@dataclass(frozen=True, slots=True)
class ReadResult:
    events: tuple[RecordedEvent, ...]
    next_offset: int
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class StreamConfiguration:
    """A stream's settings; None means "no limit" for the retention fields."""

    stream_type: StreamType | None = None
    retention_max_age: timedelta | None = None
    retention_max_count: int | None = None
    max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS
    default_visibility_timeout: timedelta = DEFAULT_VISIBILITY_TIMEOUT
    #: Queues: the wait before a redelivery after a lease ran out or a nack
    #: without a delay (storage.rules.retry_delay); 0: none.
    retry_initial_delay: timedelta = timedelta(0)
    retry_max_delay: timedelta = timedelta(0)
    retry_multiplier: float = DEFAULT_RETRY_MULTIPLIER
    #: Queues: how long an enqueued id is remembered (0: only while in the queue).
    deduplication_window: timedelta = DEFAULT_DEDUPLICATION_WINDOW


@dataclass(frozen=True, slots=True)
class StreamMetadata:
    stream_name: str
    stream_type: StreamType
    length: int
    retained_count: int
    oldest_offset: int
    newest_offset: int
    oldest_event_timestamp: datetime | None
    newest_event_timestamp: datetime | None
    created_at: datetime
    pending_count: int = 0
    in_flight_count: int = 0
    dead_letter_count: int = 0
    #: Queues: enqueue time of the oldest message in the queue (dead letters aside).
    oldest_message_enqueued_at: datetime | None = None


#: A queue message named by its id (whatever delivery is current) or by the
#: receipt of one delivery (that delivery only).
MessageRef: TypeAlias = UUID | Receipt


def event_id_of(ref: MessageRef) -> UUID:
    return ref.event_id if isinstance(ref, Receipt) else ref


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The ids of an Enqueue's messages in request order, and those of them that
    were not written because the queue knows them already."""

    event_ids: tuple[UUID, ...]
    duplicate_event_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueMessage:
    event: RecordedEvent
    delivery_attempt: int
    visible_until: datetime
    #: Names this delivery (and no other delivery of the message).
    receipt: Receipt


class AckFailureReason(enum.StrEnum):
    NOT_FOUND = "NOT_FOUND"
    NOT_HELD = "NOT_HELD"


@dataclass(frozen=True, slots=True)
class AckFailure:
    event_id: UUID
    reason: AckFailureReason
    #: The receipt the message was named by; None when named by id.
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class AckResult:
    acknowledged: tuple[UUID, ...]
    failed: tuple[AckFailure, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event: RecordedEvent
    delivery_attempts: int
    reason: str
    dead_lettered_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    dead_letters: tuple[DeadLetter, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class StreamSummary:
    stream_name: str
    stream_type: StreamType
    length: int


@dataclass(frozen=True, slots=True)
class StreamPage:
    streams: tuple[StreamSummary, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one retention pass deleted."""

    streams_examined: int
    events_deleted: int
    #: Queue message ids whose deduplication window had passed, forgotten.
    ids_forgotten: int = 0


@dataclass(frozen=True, slots=True)
class QueueTableStats:
    """What the database says about its queue tables (for metrics)."""

    #: Rows of queue_messages removed or replaced and not yet vacuumed.
    dead_tuples: int
    live_tuples: int
    #: Bytes of the table (heap and TOAST) and of its indexes.
    table_bytes: int
    index_bytes: int
    #: In-flight messages (lease not run out) by age since enqueue: the count of
    #: those at most ``bound`` seconds old, for each bound of IN_FLIGHT_AGE_BOUNDS,
    #: and then all of them.
    in_flight_by_age: tuple[int, ...]


#: Upper bounds (seconds) of the in-flight-by-age buckets (QueueTableStats).
IN_FLIGHT_AGE_BOUNDS = (1.0, 10.0, 60.0, 600.0, 3600.0)


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """Connections of a backend's pool: open, and how many of them are lent out."""

    size: int
    in_use: int

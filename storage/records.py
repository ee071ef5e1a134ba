"""Frozen records passed between the server and the storage backends."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from uuid import UUID

#: A stream name: 1-200 characters of A-Z a-z 0-9 . _ : -, starting with a letter or
#: a digit (so no name can start with "$", which is kept for names of the service's own).
STREAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", re.ASCII)
JSON_CONTENT_TYPE = "application/json"
#: The reserved name of the global log in consumer-group calls (no stream name can
#: start with "$").
ALL_STREAM = "$all"
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
DEFAULT_VISIBILITY_TIMEOUT = timedelta(seconds=30)


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


@dataclass(frozen=True, slots=True)
class QueueMessage:
    event: RecordedEvent
    delivery_attempt: int
    visible_until: datetime


class AckFailureReason(enum.StrEnum):
    NOT_FOUND = "NOT_FOUND"
    NOT_HELD = "NOT_HELD"


@dataclass(frozen=True, slots=True)
class AckFailure:
    event_id: UUID
    reason: AckFailureReason


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


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """Connections of a backend's pool: open, and how many of them are lent out."""

    size: int
    in_use: int

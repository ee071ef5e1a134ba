"""The values client methods take and return: frozen dataclasses of plain Python
types (``bytes``, ``str``, ``dict``, ``datetime``, ``timedelta``), never protobuf
messages."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: The reserved name of the global log in ``subscribe``, ``commit_offset`` and
#: checkpoints.
ALL = "$all"
#: ``expected_last_offset`` for a stream that must have no events yet.
NO_EVENTS = -1
#: The content type the server assumes when none is given.
JSON = "application/json"


class StreamType(enum.Enum):
    """The kind of a stream, fixed by its configuration or its first write."""

    UNSPECIFIED = 0
    PERSISTENT = 1
    EPHEMERAL = 2


@dataclass(frozen=True)
class NewEvent:
    """An event to append or a message to enqueue.

    ``data``: ``bytes`` are sent as they are (then set ``content_type`` unless they
    are JSON); any other value is encoded as JSON (the default, ``{}``). ``event_id``: left out, the
    client assigns a UUID before the first attempt, so that a retried write is
    recognised by the server and not written twice.
    """

    event_type: str
    data: Any = field(default_factory=dict)
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    event_id: uuid.UUID | str | None = None
    correlation_id: str = ""
    causation_id: str = ""

    def encoded_data(self) -> bytes:
        if isinstance(self.data, bytes | bytearray | memoryview):
            return bytes(self.data)
        return json.dumps(self.data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored (or a queue message's event)."""

    stream_name: str
    offset: int
    event_id: str
    event_type: str
    data: bytes
    content_type: str
    metadata: dict[str, str]
    correlation_id: str
    causation_id: str
    timestamp: datetime | None
    #: Position in the global log ($all); 0 for queue messages.
    global_position: int = 0

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.data)


@dataclass(frozen=True)
class AppendResult:
    """Where an append landed: offsets in the stream and positions in the global log."""

    first_offset: int
    last_offset: int
    first_global_position: int = 0
    last_global_position: int = 0


@dataclass(frozen=True)
class StreamAppend:
    """One stream's part of ``append_to_streams``."""

    stream_name: str
    events: Sequence[NewEvent]
    #: None: append whatever the stream holds; -1: no events yet; N: last offset N.
    expected_last_offset: int | None = None


@dataclass(frozen=True)
class ConsumerCheckpoint:
    """A consumer group's committed offset (a global position on ``$all``)."""

    stream_name: str
    consumer_group: str
    offset: int


@dataclass(frozen=True)
class ReadResult:
    events: list[RecordedEvent]
    #: The ``from_offset`` that continues the read.
    next_offset: int
    end_of_stream: bool


@dataclass(frozen=True)
class ReadAllResult:
    events: list[RecordedEvent]
    #: The ``from_position`` that continues the read.
    next_position: int
    end_of_log: bool


@dataclass(frozen=True)
class StreamMetadata:
    stream_name: str
    stream_type: StreamType
    length: int
    retained_count: int
    oldest_offset: int
    newest_offset: int
    oldest_event_timestamp: datetime | None
    newest_event_timestamp: datetime | None
    created_at: datetime | None
    pending_count: int = 0
    in_flight_count: int = 0
    dead_letter_count: int = 0


@dataclass(frozen=True)
class QueueMessage:
    """A leased message: invisible to other consumers until ``visible_until``."""

    event: RecordedEvent
    delivery_attempt: int
    visible_until: datetime | None

    @property
    def event_id(self) -> str:
        return self.event.event_id


@dataclass(frozen=True)
class AckResult:
    acknowledged: list[str]
    #: event id -> why it was not acknowledged ("NOT_FOUND" or "NOT_HELD").
    failed: dict[str, str]


@dataclass(frozen=True)
class DeadLetter:
    event: RecordedEvent
    delivery_attempts: int
    reason: str
    dead_lettered_at: datetime | None


@dataclass(frozen=True)
class DeadLetterPage:
    dead_letters: list[DeadLetter]
    #: Empty on the last page.
    next_page_token: str


@dataclass(frozen=True)
class StreamConfiguration:
    """A stream's settings; zero values and None mean the server's default."""

    stream_type: StreamType = StreamType.UNSPECIFIED
    retention_max_age: timedelta | None = None
    retention_max_count: int = 0
    max_delivery_attempts: int = 0
    default_visibility_timeout: timedelta | None = None


@dataclass(frozen=True)
class StreamSummary:
    stream_name: str
    stream_type: StreamType
    length: int


@dataclass(frozen=True)
class StreamPage:
    streams: list[StreamSummary]
    #: Empty on the last page.
    next_page_token: str

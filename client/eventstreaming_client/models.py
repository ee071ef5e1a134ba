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
    #: Queues: messages with the same non-empty key are delivered one at a time,
    #: in enqueue order (other keys flow in parallel). Logs store and return it.
    ordering_key: str = ""

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
    #: The ordering key it was written with; empty when none.
    ordering_key: str = ""

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
    #: Queues: when the oldest message still in the queue (waiting, delayed or
    #: held; dead letters aside) was enqueued; None when the queue is empty. Now
    #: minus this is the queue's age.
    oldest_message_enqueued_at: datetime | None = None


class EnqueueResult(list[str]):
    """What ``enqueue`` returns: the ids of the messages in request order (assigned
    by the server where not given), duplicates included, as a list; and in
    ``duplicate_event_ids`` those that were not written because the queue has seen
    them within its deduplication window (or still holds them)."""

    def __init__(self, event_ids: Sequence[str], duplicate_event_ids: Sequence[str] = ()) -> None:
        super().__init__(event_ids)
        self.duplicate_event_ids: list[str] = list(duplicate_event_ids)

    @property
    def event_ids(self) -> list[str]:
        return list(self)

    @property
    def written_event_ids(self) -> list[str]:
        """The ids written by this call (the duplicates left out)."""
        duplicates = set(self.duplicate_event_ids)
        return [item for item in self if item not in duplicates]

    def __repr__(self) -> str:
        return f"EnqueueResult({list(self)!r}, duplicate_event_ids={self.duplicate_event_ids!r})"


@dataclass(frozen=True)
class QueueMessage:
    """A leased message: invisible to other consumers until ``visible_until``.

    ``receipt`` names this delivery and no other: an acknowledgement, nack or
    extension by receipt acts only while this delivery is the one held (a stale
    one fails as not held, even when the same consumer holds a newer delivery).
    """

    event: RecordedEvent
    #: 1 on the first delivery, +1 on each redelivery.
    delivery_attempt: int
    #: When the lease ends.
    visible_until: datetime | None
    #: Opaque; pass it back as received.
    receipt: str = ""

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def ordering_key(self) -> str:
        return self.event.ordering_key


#: Why a message could not be acknowledged (nacked, extended): no such message in
#: the queue, or not held by this consumer (another holds it, it was never delivered
#: to this one, or the receipt names an earlier delivery).
NOT_FOUND = "NOT_FOUND"
NOT_HELD = "NOT_HELD"


@dataclass(frozen=True)
class AckFailure:
    """One message an acknowledgement did not apply to."""

    event_id: str
    #: ``"NOT_FOUND"`` or ``"NOT_HELD"``.
    reason: str
    #: The receipt it was named by; empty when named by event id.
    receipt: str = ""


@dataclass(frozen=True)
class AckResult:
    acknowledged: list[str]
    #: event id -> why it was not acknowledged ("NOT_FOUND" or "NOT_HELD").
    failed: dict[str, str]
    #: The same failures one by one, with the receipt each was named by.
    failures: list[AckFailure] = field(default_factory=list)


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


#: The server's defaults of a queue's settings.
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
DEFAULT_VISIBILITY_TIMEOUT = timedelta(seconds=30)
DEFAULT_RETRY_MULTIPLIER = 2.0
DEFAULT_DEDUPLICATION_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True)
class StreamConfiguration:
    """A stream's settings. The defaults are the server's, so a configuration made
    here and one read back compare equal.

    ``configure_stream`` replaces the whole stored configuration with this one:
    to change one setting, read the configuration, ``dataclasses.replace`` the
    field and write it back, or every other setting returns to its default.
    """

    stream_type: StreamType = StreamType.UNSPECIFIED
    #: Logs: delete events older than this; None: no age limit.
    retention_max_age: timedelta | None = None
    #: Logs: keep only the newest N events; 0: no count limit.
    retention_max_count: int = 0
    #: Queues: deliveries before a message is dead-lettered (0 also means 5).
    max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS
    #: Queues: lease length when a dequeue gives none (None also means 30 s).
    default_visibility_timeout: timedelta | None = DEFAULT_VISIBILITY_TIMEOUT
    #: Queues: the wait before a redelivery after a lease ran out, or a nack
    #: without a delay; 0: visible again at once. Delivery n + 1 waits
    #: ``min(retry_max_delay, retry_initial_delay * retry_multiplier**(n-1))``,
    #: give or take 10% (the server's jitter).
    retry_initial_delay: timedelta = timedelta(0)
    #: Queues: the longest retry delay (at least ``retry_initial_delay``).
    retry_max_delay: timedelta = timedelta(0)
    #: Queues: growth of the retry delay per delivery, 1 to 100 (0 also means 2).
    retry_multiplier: float = DEFAULT_RETRY_MULTIPLIER
    #: Queues: how long an enqueued event id is remembered, even after its message
    #: is acknowledged or dead-lettered, so that enqueuing it again is a duplicate;
    #: 0: only while the message is in the queue (None also means 5 minutes).
    deduplication_window: timedelta | None = DEFAULT_DEDUPLICATION_WINDOW


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

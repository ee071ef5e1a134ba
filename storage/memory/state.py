"""The in-memory backend's state: everything of one stream in one object."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from storage.records import DeadLetter, RecordedEvent, StreamConfiguration, StreamType


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class QueueEntry:
    """A message in a queue and its lease. ``version`` is renewed on every change
    (from QueueState.next_version), so heap items that describe an earlier state,
    of this entry or of an earlier one with the same id, are recognised and dropped."""

    event: RecordedEvent
    #: When it may next be delivered: its enqueue (or delivery) time, the end of a
    #: nack's delay, or the end of its lease plus the stream's retry delay.
    visible_at: datetime
    delivery_attempts: int = 0
    #: The consumer of the latest delivery; None when never delivered or nacked.
    consumer_id: str | None = None
    #: The end of the latest delivery's lease (None when never delivered or nacked).
    lease_until: datetime | None = None
    #: Names the latest delivery (receipts).
    delivery_id: UUID | None = None
    #: Behind an earlier message of its ordering key: in neither heap until that
    #: one leaves the queue.
    parked: bool = False
    version: int = 0


@dataclass
class QueueState:
    """A queue without timers: ``ready`` is a heap of visible messages by position,
    ``waiting`` a heap of leased or delayed ones by the time they become visible.
    Both are lazily cleaned: an item counts only while its entry has its version.
    Versions come from one counter for the whole queue, never from the entry: a
    message acknowledged (or dead-lettered) and enqueued (or redriven) again is a
    new entry, and items left over from the old one must not match it."""

    messages: dict[UUID, QueueEntry] = field(default_factory=dict)
    #: (queue position, version, event id)
    ready: list[tuple[int, int, UUID]] = field(default_factory=list)
    #: (visible at, queue position, version, event id)
    waiting: list[tuple[datetime, int, int, UUID]] = field(default_factory=list)
    #: In the order they were dead-lettered, with that order's sequence number.
    dead_letters: dict[UUID, tuple[int, DeadLetter]] = field(default_factory=dict)
    next_dead_letter: int = 1
    #: The last version handed out to an entry.
    next_version: int = 0
    #: Per ordering key, the ids of its messages in the queue, in queue order: the
    #: first is the key's head, the only one that may be delivered.
    keys: dict[str, deque[UUID]] = field(default_factory=dict)
    #: Ids enqueued within the deduplication window, with when they are forgotten,
    #: and the same as a heap by that time (items whose time no longer matches the
    #: dict are stale).
    remembered: dict[UUID, datetime] = field(default_factory=dict)
    forget_order: list[tuple[datetime, UUID]] = field(default_factory=list)


@dataclass
class MemoryStream:
    """One stream. The log keeps retained events in offset order; offsets never
    change, so the first retained offset is ``next_offset - len(events)``."""

    name: str
    #: None until ConfigureStream or the first write decides it.
    stream_type: StreamType | None
    created_at: datetime
    configuration: StreamConfiguration
    events: list[RecordedEvent] = field(default_factory=list)
    next_offset: int = 0
    offsets_by_id: dict[UUID, int] = field(default_factory=dict)
    consumer_offsets: dict[str, int] = field(default_factory=dict)
    queue: QueueState = field(default_factory=QueueState)

    @property
    def first_retained_offset(self) -> int:
        return self.next_offset - len(self.events)

    def event_at(self, offset: int) -> RecordedEvent | None:
        index = offset - self.first_retained_offset
        if 0 <= index < len(self.events):
            return self.events[index]
        return None

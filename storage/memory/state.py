"""The in-memory backend's state: everything of one stream in one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from storage.records import RecordedEvent, StreamConfiguration, StreamType


def utc_now() -> datetime:
    return datetime.now(UTC)


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

    @property
    def first_retained_offset(self) -> int:
        return self.next_offset - len(self.events)

    def event_at(self, offset: int) -> RecordedEvent | None:
        index = offset - self.first_retained_offset
        if 0 <= index < len(self.events):
            return self.events[index]
        return None

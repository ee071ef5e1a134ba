"""Persistent streams (append-only logs) for the in-memory backend."""

from __future__ import annotations

from collections.abc import Sequence

from storage.errors import DuplicateEvent, WrongExpectedOffset
from storage.memory.base import MemoryBase
from storage.memory.state import MemoryStream, utc_now
from storage.records import (
    NO_FILTER,
    AppendResult,
    NewEvent,
    ReadFilter,
    ReadResult,
    RecordedEvent,
    StreamMetadata,
    StreamType,
)


def _repeated_batch(stream: MemoryStream | None, events: Sequence[NewEvent]) -> AppendResult | None:
    """The original offsets when ``events`` repeats an earlier append exactly.

    Raises DuplicateEvent when the batch only partly repeats ids in the stream.
    """
    if stream is None:
        return None
    offsets = [stream.offsets_by_id.get(e.event_id) for e in events]
    known = [o for o in offsets if o is not None]
    if not known:
        return None
    first = offsets[0]
    exact = (
        len(known) == len(offsets)
        and first is not None
        and all(o == first + i for i, o in enumerate(offsets))
    )
    if not exact or first is None:
        repeated = next(e for e, o in zip(events, offsets, strict=True) if o is not None)
        raise DuplicateEvent(stream.name, repeated.event_id)
    return AppendResult(first, first + len(events) - 1)


class MemoryLog(MemoryBase):
    async def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        found = self._writable(stream_name, StreamType.PERSISTENT)
        repeat = _repeated_batch(found, events)
        if repeat is not None:
            return repeat
        actual_last = -1 if found is None else found.next_offset - 1
        if expected_last_offset is not None and expected_last_offset != actual_last:
            raise WrongExpectedOffset(stream_name, expected_last_offset, actual_last)
        stream = self._written(stream_name, found, StreamType.PERSISTENT)
        now = utc_now()
        first = stream.next_offset
        for i, new in enumerate(events):
            stream.events.append(new.recorded(stream_name, first + i, now))
            stream.offsets_by_id[new.event_id] = first + i
        stream.next_offset = first + len(events)
        self.signals.notify(stream_name)
        return AppendResult(first, stream.next_offset - 1)

    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
    ) -> ReadResult:
        stream = self._find(stream_name, StreamType.PERSISTENT)
        start = max(from_offset, stream.first_retained_offset)
        index = start - stream.first_retained_offset
        found: list[RecordedEvent] = []
        next_offset = start
        size = 0
        for event in stream.events[index:]:
            if read_filter.matches(event):
                size += event.size
                if found and size > self.page_bytes:
                    # Cut at the byte budget: the next page starts at this event.
                    return ReadResult(tuple(found), event.offset, False)
                found.append(event)
            next_offset = event.offset + 1
            if len(found) == max_count:
                break
        return ReadResult(tuple(found), next_offset, next_offset >= stream.next_offset)

    async def get_stream_length(self, stream_name: str) -> int:
        return self._find(stream_name, StreamType.PERSISTENT).next_offset

    def _log_metadata(self, stream: MemoryStream) -> StreamMetadata:
        oldest = stream.events[0] if stream.events else None
        newest = stream.events[-1] if stream.events else None
        return StreamMetadata(
            stream_name=stream.name,
            stream_type=stream.stream_type or StreamType.PERSISTENT,
            length=stream.next_offset,
            retained_count=len(stream.events),
            oldest_offset=oldest.offset if oldest else -1,
            newest_offset=stream.next_offset - 1,
            oldest_event_timestamp=oldest.timestamp if oldest else None,
            newest_event_timestamp=newest.timestamp if newest else None,
            created_at=stream.created_at,
        )

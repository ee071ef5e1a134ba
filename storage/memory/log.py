"""Persistent streams (append-only logs) and the global log for the in-memory
backend."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from uuid import UUID

from storage.errors import (
    CheckpointExists,
    DuplicateEvent,
    OffsetOutOfRange,
    WrongExpectedOffset,
    WrongExpectedOffsets,
)
from storage.memory.base import MemoryBase
from storage.memory.state import MemoryStream, utc_now
from storage.records import (
    ALL_STREAM,
    NO_ALL_FILTER,
    NO_FILTER,
    AllFilter,
    AllPage,
    AppendResult,
    ConsumerCheckpoint,
    ReadFilter,
    ReadResult,
    RecordedEvent,
    StreamAppend,
    StreamMetadata,
    StreamType,
)
from storage.rules import (
    ALL_SCAN_WINDOW,
    MAX_PROBED_STREAMS,
    all_page,
    check_stream_type,
    within_budget,
)


def _position(event: RecordedEvent) -> int:
    return event.global_position


def _size(event: RecordedEvent) -> int:
    return event.size


class MemoryLog(MemoryBase):
    async def append_to_streams(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> tuple[AppendResult, ...]:
        # The same checks, in the same order, as event_streaming.append_to_streams.
        found = [self._streams.get(a.stream_name) for a in appends]
        for append, stream in zip(appends, found, strict=True):
            if stream is not None:
                check_stream_type(append.stream_name, stream.stream_type, StreamType.PERSISTENT)
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        failures = [
            WrongExpectedOffset(a.stream_name, a.expected_last_offset, actual)
            for a, stream in zip(appends, found, strict=True)
            if a.expected_last_offset is not None
            and a.expected_last_offset
            != (actual := -1 if stream is None else stream.next_offset - 1)
        ]
        known = self._known_ids(appends, found)
        if failures or known:
            repeat = self._repeat(appends, found)
            if repeat is not None:
                return repeat
            if known:
                stream_name, event_id = known[0]
                raise DuplicateEvent(stream_name, event_id)
            raise WrongExpectedOffsets(failures)
        results = tuple(
            self._write(append, stream) for append, stream in zip(appends, found, strict=True)
        )
        if checkpoint is not None:
            self._commit_checkpoint(checkpoint)
        for append in appends:
            self.signals.notify(append.stream_name)
        if any(a.events for a in appends):
            self.signals.notify(ALL_STREAM)
        return results

    def _known_ids(
        self, appends: Sequence[StreamAppend], found: Sequence[MemoryStream | None]
    ) -> list[tuple[str, UUID]]:
        """Ids of the call already stored in their streams, in request order."""
        return [
            (append.stream_name, new.event_id)
            for append, stream in zip(appends, found, strict=True)
            if stream is not None
            for new in append.events
            if new.event_id in stream.offsets_by_id
        ]

    def _repeat(
        self, appends: Sequence[StreamAppend], found: Sequence[MemoryStream | None]
    ) -> tuple[AppendResult, ...] | None:
        """The original results when the whole call is already in: every id in its
        stream, at consecutive global positions in the call's order."""
        stored: list[list[RecordedEvent]] = []
        for append, stream in zip(appends, found, strict=True):
            events = []
            for new in append.events:
                offset = None if stream is None else stream.offsets_by_id.get(new.event_id)
                event = None if offset is None or stream is None else stream.event_at(offset)
                if event is None:
                    return None
                events.append(event)
            stored.append(events)
        positions = [e.global_position for events in stored for e in events]
        if not positions or positions != list(range(positions[0], positions[0] + len(positions))):
            return None
        return tuple(
            AppendResult(
                events[0].offset,
                events[-1].offset,
                events[0].global_position,
                events[-1].global_position,
            )
            for events in stored
        )

    def _write(self, append: StreamAppend, found: MemoryStream | None) -> AppendResult:
        stream = self._written(append.stream_name, found, StreamType.PERSISTENT)
        now = utc_now()
        first_offset, first_position = stream.next_offset, self._last_position + 1
        for new in append.events:
            self._last_position += 1
            event = new.recorded(append.stream_name, stream.next_offset, now, self._last_position)
            stream.events.append(event)
            stream.offsets_by_id[new.event_id] = stream.next_offset
            stream.next_offset += 1
            self._log.append(event)
        return AppendResult(
            first_offset, stream.next_offset - 1, first_position, self._last_position
        )

    def _check_checkpoint(self, checkpoint: ConsumerCheckpoint) -> None:
        if checkpoint.stream_name == ALL_STREAM:
            committed = self._all_offsets.get(checkpoint.consumer_group)
            newest = self._last_position
        else:
            stream = self._find(checkpoint.stream_name, StreamType.PERSISTENT)
            committed = stream.consumer_offsets.get(checkpoint.consumer_group)
            newest = stream.next_offset - 1
        if committed is not None and committed >= checkpoint.offset:
            raise CheckpointExists(checkpoint.stream_name, checkpoint.consumer_group, committed)
        if checkpoint.offset > newest:
            raise OffsetOutOfRange(checkpoint.stream_name, checkpoint.offset, newest)

    def _commit_checkpoint(self, checkpoint: ConsumerCheckpoint) -> None:
        if checkpoint.stream_name == ALL_STREAM:
            self._all_offsets[checkpoint.consumer_group] = checkpoint.offset
        else:
            stream = self._streams[checkpoint.stream_name]
            stream.consumer_offsets[checkpoint.consumer_group] = checkpoint.offset

    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
        *,
        backward: bool = False,
    ) -> ReadResult:
        stream = self._find(stream_name, StreamType.PERSISTENT)
        first = stream.first_retained_offset
        if backward:
            start = stream.next_offset - 1 if from_offset < 0 else from_offset
            top = min(start, stream.next_offset - 1) - first
            candidates = stream.events[top::-1] if top >= 0 else []
        else:
            start = max(from_offset, first)
            candidates = stream.events[start - first :]
        matched: list[RecordedEvent] = []
        step = -1 if backward else 1
        next_offset = start
        for event in candidates:
            if read_filter.matches(event):
                matched.append(event)
            next_offset = event.offset + step
            if len(matched) == max_count:
                break
        found, left_out = within_budget(matched, _size, self.page_bytes)
        if left_out is not None:
            # Cut at the byte budget: the next page starts at the event left out.
            return ReadResult(tuple(found), left_out.offset, False)
        if backward:
            if not candidates or next_offset < first:
                next_offset = -1
            return ReadResult(tuple(found), next_offset, next_offset < first)
        return ReadResult(tuple(found), next_offset, next_offset >= stream.next_offset)

    async def read_all(
        self,
        from_position: int,
        max_count: int,
        read_filter: AllFilter = NO_ALL_FILTER,
        *,
        backward: bool = False,
    ) -> AllPage:
        log, head = self._log, self._last_position
        start = head if backward and from_position <= 0 else from_position
        window = None
        if read_filter.stream_prefixes:
            matching = sum(
                1
                for stream in self._streams.values()
                if stream.name.startswith(read_filter.stream_prefixes)
                and stream.stream_type == StreamType.PERSISTENT
            )
            window = ALL_SCAN_WINDOW if matching > MAX_PROBED_STREAMS else None
        if backward:
            index = bisect.bisect_right(log, start, key=_position) - 1
            candidates = log[index::-1] if index >= 0 else []
            low = -1 if window is None else min(start, head) - window
            in_window = (e for e in candidates if e.global_position > low)
        else:
            candidates = log[bisect.bisect_left(log, start, key=_position) :]
            high = None if window is None else start + window
            in_window = (e for e in candidates if high is None or e.global_position < high)
        matched = (e for e in in_window if read_filter.matches(e))
        found, left_out = within_budget(
            itertools.islice(matched, max_count), _size, self.page_bytes
        )
        return all_page(
            tuple(found),
            None if left_out is None else left_out.global_position,
            start=start,
            max_count=max_count,
            backward=backward,
            head=head,
            oldest=log[0].global_position if log else None,
            window=window,
        )

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

    async def get_stream_length(self, stream_name: str) -> int:
        return self._find(stream_name, StreamType.PERSISTENT).next_offset

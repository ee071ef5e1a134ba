"""Persistent streams (append-only logs) on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.errors import DuplicateEvent, StreamNotFound, WrongExpectedOffset, WrongStreamType
from storage.postgres.base import PostgresBase
from storage.postgres.errors import translates_errors
from storage.postgres.rows import EVENT_COLUMNS, event_arrays, event_from_row
from storage.records import (
    NO_FILTER,
    AppendResult,
    NewEvent,
    ReadFilter,
    ReadResult,
    StreamMetadata,
    StreamType,
)

APPEND_SQL = "SELECT * FROM event_streaming.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"

_READ_SELECT = f"""
WITH s AS (
    SELECT stream_id, stream_type, next_offset
      FROM event_streaming.streams WHERE stream_name = $1
)
SELECT s.stream_type, s.next_offset, e.*
  FROM s LEFT JOIN LATERAL (
    SELECT stream_offset, created_at, {EVENT_COLUMNS}
      FROM event_streaming.events ev
     WHERE ev.stream_id = s.stream_id AND ev.stream_offset >= $2 {{filters}}
     ORDER BY ev.stream_offset
     LIMIT $3
  ) e ON true
 ORDER BY e.stream_offset
"""
# Two statements rather than one with "$4 IS NULL OR ...": the plain read, the hot
# path, keeps a plan that walks the primary key and nothing else.
READ_SQL = _READ_SELECT.format(filters="")
READ_FILTERED_SQL = _READ_SELECT.format(
    filters="AND ($4::timestamptz IS NULL OR ev.created_at >= $4) "
    "AND ($5::text[] IS NULL OR ev.event_type = ANY($5))"
)

LENGTH_SQL = "SELECT stream_type, next_offset FROM event_streaming.streams WHERE stream_name = $1"

METADATA_SQL = """
SELECT s.stream_name, s.stream_type, s.next_offset, s.created_at,
       o.stream_offset AS oldest_offset, o.created_at AS oldest_at, n.created_at AS newest_at
  FROM event_streaming.streams s
  LEFT JOIN LATERAL (
    SELECT stream_offset, created_at FROM event_streaming.events
     WHERE stream_id = s.stream_id ORDER BY stream_offset LIMIT 1) o ON true
  LEFT JOIN LATERAL (
    SELECT created_at FROM event_streaming.events
     WHERE stream_id = s.stream_id ORDER BY stream_offset DESC LIMIT 1) n ON true
 WHERE s.stream_name = $1
"""

_APPENDED, _REPEAT, _WRONG_OFFSET, _DUPLICATE, _WRONG_TYPE = range(5)


def _check_type(stream_name: str, actual: int | None, wanted: StreamType) -> None:
    if actual is not None and actual != wanted:
        raise WrongStreamType(stream_name, StreamType(actual), wanted)


class PostgresLog(PostgresBase):
    @translates_errors
    async def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        row = await self.pool.fetchrow(
            APPEND_SQL, stream_name, expected_last_offset, *event_arrays(events)
        )
        assert row is not None
        outcome = row["outcome"]
        if outcome == _WRONG_TYPE:
            _check_type(stream_name, row["actual_type"], StreamType.PERSISTENT)
        if outcome == _WRONG_OFFSET:
            assert expected_last_offset is not None
            raise WrongExpectedOffset(stream_name, expected_last_offset, row["last_offset"])
        if outcome == _DUPLICATE:
            raise DuplicateEvent(stream_name, row["conflict_event_id"])
        if outcome == _APPENDED:
            self._announce(stream_name)
        return AppendResult(row["first_offset"], row["last_offset"])

    @translates_errors
    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
    ) -> ReadResult:
        if read_filter.is_empty:
            rows = await self.pool.fetch(READ_SQL, stream_name, from_offset, max_count)
        else:
            rows = await self.pool.fetch(
                READ_FILTERED_SQL,
                stream_name,
                from_offset,
                max_count,
                read_filter.from_timestamp,
                sorted(read_filter.event_types) or None,
            )
        if not rows:
            raise StreamNotFound(stream_name)
        _check_type(stream_name, rows[0]["stream_type"], StreamType.PERSISTENT)
        stream_next = rows[0]["next_offset"]
        events = tuple(
            event_from_row(stream_name, r["stream_offset"], r)
            for r in rows
            if r["stream_offset"] is not None
        )
        if len(events) == max_count:
            next_offset = events[-1].offset + 1
        else:
            next_offset = max(from_offset, stream_next)
        return ReadResult(events, next_offset, next_offset >= stream_next)

    @translates_errors
    async def get_stream_length(self, stream_name: str) -> int:
        row = await self.pool.fetchrow(LENGTH_SQL, stream_name)
        if row is None:
            raise StreamNotFound(stream_name)
        _check_type(stream_name, row["stream_type"], StreamType.PERSISTENT)
        length: int = row["next_offset"]
        return length

    def _log_metadata(self, row: Any) -> StreamMetadata:
        """Log-shaped metadata from a METADATA_SQL row. Retention only ever deletes
        a prefix of the log, so the retained count is derived from the oldest offset."""
        oldest = row["oldest_offset"]
        return StreamMetadata(
            stream_name=row["stream_name"],
            stream_type=StreamType(row["stream_type"] or StreamType.PERSISTENT),
            length=row["next_offset"],
            retained_count=0 if oldest is None else row["next_offset"] - oldest,
            oldest_offset=-1 if oldest is None else oldest,
            newest_offset=row["next_offset"] - 1,
            oldest_event_timestamp=row["oldest_at"],
            newest_event_timestamp=row["newest_at"],
            created_at=row["created_at"],
        )

"""Persistent streams (append-only logs) on PostgreSQL."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from storage.errors import DuplicateEvent, StreamNotFound, WrongExpectedOffset
from storage.postgres.base import PostgresBase
from storage.postgres.rows import (
    EVENT_COLUMNS,
    event_arrays,
    event_from_row,
    payload_size,
    split_cut,
    within_budget,
)
from storage.records import (
    NO_FILTER,
    AppendResult,
    NewEvent,
    ReadFilter,
    ReadResult,
    StreamMetadata,
    StreamType,
)
from storage.rules import check_stream_type


class AppendOutcome(enum.StrEnum):
    """What event_streaming.append_events (migrations/004_clean_writes.sql) did."""

    APPENDED = "appended"
    #: An exact repeat of an earlier batch: nothing written, its offsets returned.
    REPEAT = "repeat"
    #: The expectation failed; last_offset is the actual last offset.
    WRONG_OFFSET = "wrong_offset"
    #: Some ids (conflict_event_id the first) are already in the stream.
    DUPLICATE = "duplicate"
    #: The stream is not a log (actual_type).
    WRONG_TYPE = "wrong_type"


APPEND_SQL = (
    "SELECT * FROM event_streaming.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)

_PAGE_COLUMNS = ("stream_offset", "created_at", *(c.strip() for c in EVENT_COLUMNS.split(",")))

_READ_PAGE = f"""
SELECT ev.stream_offset, ev.created_at, {EVENT_COLUMNS}, {payload_size("ev")} AS size
  FROM event_streaming.events ev
 WHERE ev.stream_id = s.stream_id AND ev.stream_offset >= $2 {{filters}}
 ORDER BY ev.stream_offset
 LIMIT $3
"""

# One statement: no row when the stream does not exist, one row of NULL events for
# an empty page; the page is cut at the byte budget ($4), see rows.within_budget.
_READ_SELECT = f"""
WITH s AS (
    SELECT stream_id, stream_type, next_offset
      FROM event_streaming.streams WHERE stream_name = $1
)
SELECT s.stream_type, s.next_offset, e.*
  FROM s LEFT JOIN LATERAL ({within_budget(_READ_PAGE, _PAGE_COLUMNS, "stream_offset", "$4")}
  ) e ON true
 ORDER BY e.stream_offset
"""
# Two statements rather than one with "$5 IS NULL OR ...": the plain read, the hot
# path, keeps a plan that walks the primary key and nothing else.
READ_SQL = _READ_SELECT.format(filters="")
READ_FILTERED_SQL = _READ_SELECT.format(
    filters="AND ($5::timestamptz IS NULL OR ev.created_at >= $5) "
    "AND ($6::text[] IS NULL OR ev.event_type = ANY($6))"
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


class PostgresLog(PostgresBase):
    async def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        row = await self.db.fetchrow(
            APPEND_SQL, stream_name, expected_last_offset, *event_arrays(events)
        )
        assert row is not None
        outcome = AppendOutcome(row["outcome"])
        if outcome is AppendOutcome.WRONG_TYPE:
            check_stream_type(stream_name, row["actual_type"], StreamType.PERSISTENT)
        if outcome is AppendOutcome.WRONG_OFFSET:
            assert expected_last_offset is not None
            raise WrongExpectedOffset(stream_name, expected_last_offset, row["last_offset"])
        if outcome is AppendOutcome.DUPLICATE:
            raise DuplicateEvent(stream_name, row["conflict_event_id"])
        if outcome is AppendOutcome.APPENDED:
            self._announce(stream_name)
        return AppendResult(row["first_offset"], row["last_offset"])

    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
    ) -> ReadResult:
        if read_filter.is_empty:
            rows = await self.db.fetch(
                READ_SQL, stream_name, from_offset, max_count, self.page_bytes
            )
        else:
            rows = await self.db.fetch(
                READ_FILTERED_SQL,
                stream_name,
                from_offset,
                max_count,
                self.page_bytes,
                read_filter.from_timestamp,
                sorted(read_filter.event_types) or None,
            )
        if not rows:
            raise StreamNotFound(stream_name)
        check_stream_type(stream_name, rows[0]["stream_type"], StreamType.PERSISTENT)
        stream_next = rows[0]["next_offset"]
        page, left_out = split_cut([r for r in rows if r["stream_offset"] is not None])
        events = tuple(event_from_row(stream_name, r["stream_offset"], r) for r in page)
        if left_out is not None:
            # Cut at the byte budget: the next page starts at the event left out.
            return ReadResult(events, left_out["stream_offset"], False)
        if len(events) == max_count:
            next_offset = events[-1].offset + 1
        else:
            next_offset = max(from_offset, stream_next)
        return ReadResult(events, next_offset, next_offset >= stream_next)

    async def get_stream_length(self, stream_name: str) -> int:
        row = await self.db.fetchrow(LENGTH_SQL, stream_name)
        if row is None:
            raise StreamNotFound(stream_name)
        check_stream_type(stream_name, row["stream_type"], StreamType.PERSISTENT)
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

"""Persistent streams (append-only logs) and the global log on PostgreSQL."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from typing import Any

from storage.errors import (
    CheckpointExists,
    DuplicateEvent,
    OffsetOutOfRange,
    StorageError,
    StreamNotFound,
    WrongExpectedOffset,
    WrongExpectedOffsets,
)
from storage.postgres.base import PostgresBase
from storage.postgres.group_commit import Call, GroupCommit
from storage.postgres.rows import (
    EVENT_COLUMNS,
    event_arrays,
    log_events_from_rows,
    payload_size,
    split_cut,
    within_budget,
)
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
    StreamAppend,
    StreamMetadata,
    StreamType,
)
from storage.rules import ALL_SCAN_WINDOW, MAX_PROBED_STREAMS, all_page, check_stream_type

#: The largest bigint: "from the last offset" for backward reads.
_LAST = 2**63 - 1


class AppendOutcome(enum.StrEnum):
    """What event_streaming.append_calls (migrations/005_global_log.sql) did with
    one call."""

    APPENDED = "appended"
    #: The whole call is already in: nothing written, its original results.
    REPEAT = "repeat"
    #: One row per append whose expectation failed; last_offset is the actual one.
    WRONG_OFFSET = "wrong_offset"
    #: Some ids (conflict_event_id the first) are already in their streams.
    DUPLICATE = "duplicate"
    #: An append's stream is not a log (actual_type).
    WRONG_TYPE = "wrong_type"
    #: The checkpoint's group is already at or past it (last_offset: committed).
    CHECKPOINT_EXISTS = "checkpoint_exists"
    CHECKPOINT_NOT_FOUND = "checkpoint_not_found"
    #: The checkpoint is beyond the newest offset or position (last_offset: newest).
    CHECKPOINT_OUT_OF_RANGE = "checkpoint_out_of_range"
    CHECKPOINT_WRONG_TYPE = "checkpoint_wrong_type"


APPEND_SQL = (
    "SELECT * FROM event_streaming.append_calls("
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
)

_EVENT_NAMES = tuple(c.strip() for c in EVENT_COLUMNS.split(","))
_PAGE_COLUMNS = ("stream_offset", "global_position", "created_at", *_EVENT_NAMES)


def _stream_read(*, filtered: bool, backward: bool) -> str:
    """A page of one stream in one statement: no row when the stream does not exist,
    one row of NULL events for an empty page; cut at the byte budget ($4)."""
    condition = "ev.stream_offset <= $2" if backward else "ev.stream_offset >= $2"
    direction = "DESC" if backward else ""
    filters = (
        "AND ($5::timestamptz IS NULL OR ev.created_at >= $5) "
        "AND ($6::text[] IS NULL OR ev.event_type = ANY($6))"
        if filtered
        else ""
    )
    page = f"""
SELECT ev.stream_offset, ev.global_position, ev.created_at, {EVENT_COLUMNS},
       {payload_size("ev")} AS size
  FROM event_streaming.events ev
 WHERE ev.stream_id = s.stream_id AND {condition} {filters}
 ORDER BY ev.stream_offset {direction}
 LIMIT $3
"""
    budgeted = within_budget(page, _PAGE_COLUMNS, "stream_offset", "$4", descending=backward)
    # Backward reads also learn the oldest retained offset (the start they stop at).
    oldest = (
        "(SELECT o.stream_offset FROM event_streaming.events o WHERE o.stream_id = s.stream_id"
        " ORDER BY o.stream_offset LIMIT 1)"
        if backward
        else "NULL::bigint"
    )
    return f"""
WITH s AS (
    SELECT stream_id, stream_type, next_offset
      FROM event_streaming.streams WHERE stream_name = $1
)
SELECT s.stream_type, s.next_offset, {oldest} AS oldest, e.*
  FROM s LEFT JOIN LATERAL ({budgeted}
  ) e ON true
 ORDER BY e.stream_offset {direction}
"""


# Separate statements rather than one with "$5 IS NULL OR ...": the plain forward
# read, the hot path, keeps a plan that walks the primary key and nothing else.
READ_SQL = _stream_read(filtered=False, backward=False)
READ_FILTERED_SQL = _stream_read(filtered=True, backward=False)
READ_BACKWARD_SQL = _stream_read(filtered=False, backward=True)
READ_BACKWARD_FILTERED_SQL = _stream_read(filtered=True, backward=True)

# -- the global log ----------------------------------------------------------------
_ALL_COLUMNS = ("global_position", "stream_offset", "created_at", "stream_name", *_EVENT_NAMES)
_ALL_SELECT = f"""
SELECT e.global_position, e.stream_offset, e.created_at, s.stream_name,
       {", ".join(f"e.{c}" for c in _EVENT_NAMES)}, {payload_size("e")} AS size
"""


def _prefix_streams(prefixes: str) -> str:
    """The logs whose names start with one of the text[] ``prefixes`` (each found by
    a range of the name index: stream names are ASCII, so every name that starts
    with a prefix sorts below the prefix followed by DEL, byte by byte)."""
    return f"""
    SELECT s.stream_id, s.stream_name
      FROM unnest({prefixes}::text[]) AS p(prefix)
      JOIN event_streaming.streams s
        ON s.stream_name ~>=~ p.prefix AND s.stream_name ~<~ (p.prefix || chr(127))
       AND left(s.stream_name, char_length(p.prefix)) = p.prefix
     WHERE s.stream_type = 1
"""


COUNT_PREFIX_STREAMS_SQL = f"SELECT count(*) FROM ({_prefix_streams('$1')} LIMIT $2) m"


#: The stream name of each event ``e`` of a page, looked up by key (LIMIT 1 keeps the
#: planner from hashing every stream to join a page of events).
_STREAM_NAME_BY_KEY = """CROSS JOIN LATERAL (
    SELECT n.stream_name FROM event_streaming.streams n
     WHERE n.stream_id = e.stream_id LIMIT 1) s"""


def _all_read(kind: str, *, backward: bool) -> str:
    """A page of the global log: $1 the position to start from (inclusive), $2 the
    page size, $3 the byte budget, then by ``kind``:

    - "all": no filter; the log in order.
    - "types": $4 event types; each type's own run of the type index.
    - "streams": $4 stream prefixes; each matching stream's own run of the stream
      index (when few streams match).
    - "streams-types": $4 event types, $5 stream prefixes; each matching stream's run
      of each type.
    - "window": $4 event types (NULL: any), $5 stream prefixes, over a bounded
      window of the log (when many streams match a prefix): at most ALL_SCAN_WINDOW
      positions per call.
    """
    op, direction = ("<=", "DESC") if backward else (">=", "")
    joined = (
        "FROM event_streaming.events e JOIN event_streaming.streams s ON s.stream_id = e.stream_id"
    )
    if kind == "all":
        page = f"""{_ALL_SELECT} {joined}
 WHERE e.global_position {op} $1
 ORDER BY e.global_position {direction} LIMIT $2"""
    elif kind == "types":
        # Each type's run, planned for that very type (see events_of_type).
        backward_flag = "true" if backward else "false"
        page = f"""{_ALL_SELECT}
  FROM unnest($4::text[]) AS t(event_type)
  CROSS JOIN LATERAL event_streaming.events_of_type(t.event_type, $1, $2, {backward_flag}) e
  {_STREAM_NAME_BY_KEY}
 ORDER BY e.global_position {direction} LIMIT $2"""
    elif kind == "streams":
        page = f"""{_ALL_SELECT}
  FROM ({_prefix_streams("$4")}) s
  CROSS JOIN LATERAL (
    SELECT * FROM event_streaming.events x
     WHERE x.stream_id = s.stream_id AND x.global_position {op} $1
     ORDER BY x.stream_id {direction}, x.global_position {direction} LIMIT $2) e
 ORDER BY e.global_position {direction} LIMIT $2"""
    elif kind == "streams-types":
        # Each matching stream's run of each type (the stream-type index, by offset:
        # within a stream, offsets follow positions), from the offset of the stream's
        # first event at or past $1: never the stream's events of other types.
        page = f"""{_ALL_SELECT}
  FROM ({_prefix_streams("$5")}) s
  CROSS JOIN LATERAL (
    SELECT b.stream_offset FROM event_streaming.events b
     WHERE b.stream_id = s.stream_id AND b.global_position {op} $1
     ORDER BY b.stream_id {direction}, b.global_position {direction} LIMIT 1) f
  CROSS JOIN unnest($4::text[]) AS t(event_type)
  CROSS JOIN LATERAL (
    SELECT * FROM event_streaming.events x
     WHERE x.stream_id = s.stream_id AND x.event_type = t.event_type
       AND x.stream_offset {op} f.stream_offset
     ORDER BY x.stream_id {direction}, x.event_type {direction}, x.stream_offset {direction}
     LIMIT $2) e
 ORDER BY e.global_position {direction} LIMIT $2"""
    else:
        # Both ends of the window are index bounds (an expression of the parameters, not
        # of the column), and OFFSET 0 keeps the window the driving side: the position
        # index is walked over at most ALL_SCAN_WINDOW positions, the type filter
        # applied there, and each event left looked up by its stream's key, never the
        # other way round (thousands of matching streams probed one by one, or all
        # their events read, or every stream hashed).
        window = (
            f"x.global_position > least($1, h.last_position) - {ALL_SCAN_WINDOW}"
            if backward
            # never $1 + ... unguarded: $1 may be near the largest bigint
            else f"x.global_position < least($1, {_LAST - ALL_SCAN_WINDOW}) + {ALL_SCAN_WINDOW}"
        )
        page = f"""{_ALL_SELECT}
  FROM (SELECT * FROM event_streaming.events x
         WHERE x.global_position {op} $1 AND {window}
           AND ($4::text[] IS NULL OR x.event_type = ANY($4))
         ORDER BY x.global_position {direction} OFFSET 0) e
  {_STREAM_NAME_BY_KEY}
 WHERE EXISTS (SELECT 1 FROM unnest($5::text[]) AS p(prefix)
                WHERE starts_with(s.stream_name, p.prefix))
 ORDER BY e.global_position {direction} LIMIT $2"""
    budgeted = within_budget(page, _ALL_COLUMNS, "global_position", "$3", descending=backward)
    # Backward reads also learn the oldest position (the start they stop at).
    oldest = (
        "(SELECT o.global_position FROM event_streaming.events o "
        "ORDER BY o.global_position LIMIT 1)"
        if backward
        else "NULL::bigint"
    )
    return f"""
SELECT h.last_position AS head, {oldest} AS oldest, p.*
  FROM event_streaming.log_head h LEFT JOIN LATERAL ({budgeted}
  ) p ON true
 ORDER BY p.global_position {direction}
"""


READ_ALL_SQL = {
    (kind, backward): _all_read(kind, backward=backward)
    for kind in ("all", "types", "streams", "streams-types", "window")
    for backward in (False, True)
}

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
    async def append_to_streams(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> tuple[AppendResult, ...]:
        return await self._group_commit().submit(appends, checkpoint)

    def hand_on_append(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> asyncio.Future[tuple[AppendResult, ...]]:
        return self._group_commit().hand_on(appends, checkpoint)

    def _group_commit(self) -> GroupCommit:
        if self._appends is None:
            self._appends = GroupCommit(self._write_calls)
        return self._appends

    async def _write_calls(self, calls: Sequence[Call]) -> None:
        """Write a group of calls in one transaction; settle each call's future."""
        appends = [a for call in calls for a in call.appends]
        rows = await self.db.fetch(
            APPEND_SQL,
            [i for i, call in enumerate(calls, 1) for _ in call.appends],
            [a.stream_name for a in appends],
            [a.expected_last_offset for a in appends],
            [i for i, a in enumerate(appends, 1) for _ in a.events],
            *event_arrays(e for a in appends for e in a.events),
            [None if c.checkpoint is None else c.checkpoint.stream_name for c in calls],
            [None if c.checkpoint is None else c.checkpoint.consumer_group for c in calls],
            [None if c.checkpoint is None else c.checkpoint.offset for c in calls],
        )
        by_call: dict[int, list[Any]] = {}
        for row in rows:
            by_call.setdefault(row["call_index"], []).append(row)
        written: list[str] = []
        for index, call in enumerate(calls, 1):
            rows_of_call = by_call.get(index, [])
            if rows_of_call and rows_of_call[0]["outcome"] == AppendOutcome.APPENDED:
                written += [a.stream_name for a in call.appends]
            if call.done.done():  # cancelled by a caller that gave up (written all the same)
                continue
            try:
                call.done.set_result(self._call_results(call, rows_of_call))
            except StorageError as exc:
                call.done.set_exception(exc)
        if written:
            self._announce(*dict.fromkeys(written), log=True)

    def _call_results(self, call: Call, rows: Sequence[Any]) -> tuple[AppendResult, ...]:
        """A call's results, or the storage error its refusal stands for."""
        outcome = AppendOutcome(rows[0]["outcome"]) if rows else AppendOutcome.APPENDED
        if outcome in (AppendOutcome.APPENDED, AppendOutcome.REPEAT):
            return tuple(
                AppendResult(
                    r["first_offset"], r["last_offset"], r["first_position"], r["last_position"]
                )
                for r in rows
            )
        self._refused(outcome, rows, call.appends, call.checkpoint)
        raise AssertionError(f"unhandled outcome {outcome}")

    @staticmethod
    def _refused(
        outcome: AppendOutcome,
        rows: Sequence[Any],
        appends: Sequence[StreamAppend],
        checkpoint: ConsumerCheckpoint | None,
    ) -> None:
        """Raise the storage error a refused append_to_streams stands for."""
        row = rows[0]
        if outcome is AppendOutcome.WRONG_TYPE:
            name = appends[row["append_index"] - 1].stream_name
            check_stream_type(name, row["actual_type"], StreamType.PERSISTENT)
        if outcome is AppendOutcome.WRONG_OFFSET:
            failures = []
            for r in rows:
                append = appends[r["append_index"] - 1]
                assert append.expected_last_offset is not None
                failures.append(
                    WrongExpectedOffset(
                        append.stream_name, append.expected_last_offset, r["last_offset"]
                    )
                )
            raise WrongExpectedOffsets(failures)
        if outcome is AppendOutcome.DUPLICATE:
            conflict = row["conflict_event_id"]
            name = next(
                a.stream_name for a in appends if any(e.event_id == conflict for e in a.events)
            )
            raise DuplicateEvent(name, conflict)
        assert checkpoint is not None
        if outcome is AppendOutcome.CHECKPOINT_EXISTS:
            raise CheckpointExists(
                checkpoint.stream_name, checkpoint.consumer_group, row["last_offset"]
            )
        if outcome is AppendOutcome.CHECKPOINT_NOT_FOUND:
            raise StreamNotFound(checkpoint.stream_name)
        if outcome is AppendOutcome.CHECKPOINT_OUT_OF_RANGE:
            raise OffsetOutOfRange(checkpoint.stream_name, checkpoint.offset, row["last_offset"])
        if outcome is AppendOutcome.CHECKPOINT_WRONG_TYPE:
            check_stream_type(checkpoint.stream_name, row["actual_type"], StreamType.PERSISTENT)

    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
        *,
        backward: bool = False,
    ) -> ReadResult:
        start = _LAST if backward and from_offset < 0 else from_offset
        arguments: list[Any] = [stream_name, start, max_count, self.page_bytes]
        if read_filter.is_empty:
            sql = READ_BACKWARD_SQL if backward else READ_SQL
        else:
            sql = READ_BACKWARD_FILTERED_SQL if backward else READ_FILTERED_SQL
            arguments += [read_filter.from_timestamp, sorted(read_filter.event_types) or None]
        rows = await self.db.fetch(sql, *arguments)
        if not rows:
            raise StreamNotFound(stream_name)
        check_stream_type(stream_name, rows[0]["stream_type"], StreamType.PERSISTENT)
        stream_next = rows[0]["next_offset"]
        page, left_out = split_cut([r for r in rows if r["stream_offset"] is not None])
        events = log_events_from_rows(page, stream_name)
        if left_out is not None:
            # Cut at the byte budget: the next page starts at the event left out.
            return ReadResult(events, left_out["stream_offset"], False)
        if backward:
            oldest = rows[0]["oldest"]
            if len(events) == max_count and events[-1].offset != oldest:
                return ReadResult(events, events[-1].offset - 1, False)
            return ReadResult(events, -1, True)
        if len(events) == max_count:
            next_offset = events[-1].offset + 1
        else:
            next_offset = max(from_offset, stream_next)
        return ReadResult(events, next_offset, next_offset >= stream_next)

    async def read_all(
        self,
        from_position: int,
        max_count: int,
        read_filter: AllFilter = NO_ALL_FILTER,
        *,
        backward: bool = False,
    ) -> AllPage:
        start = _LAST if backward and from_position <= 0 else from_position
        types = sorted(read_filter.event_types) or None
        prefixes = list(read_filter.stream_prefixes) or None
        filters: tuple[Any, ...] = ()
        kind = "all"
        if prefixes is not None:
            matching = await self.db.fetchval(
                COUNT_PREFIX_STREAMS_SQL, prefixes, MAX_PROBED_STREAMS + 1
            )
            if matching > MAX_PROBED_STREAMS:
                kind, filters = "window", (types, prefixes)
            elif types is None:
                kind, filters = "streams", (prefixes,)
            else:
                kind, filters = "streams-types", (types, prefixes)
        elif types is not None:
            kind, filters = "types", (types,)
        rows = await self.db.fetch(
            READ_ALL_SQL[kind, backward], start, max_count, self.page_bytes, *filters
        )
        head: int = rows[0]["head"]
        page, left_out = split_cut([r for r in rows if r["global_position"] is not None])
        events = log_events_from_rows(page)
        window = ALL_SCAN_WINDOW if kind == "window" else None
        return all_page(
            events,
            left_out["global_position"] if left_out is not None else None,
            start=start,
            max_count=max_count,
            backward=backward,
            head=head,
            oldest=rows[0]["oldest"],
            window=window,
        )

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


__all__ = ["ALL_STREAM", "METADATA_SQL", "PostgresLog"]

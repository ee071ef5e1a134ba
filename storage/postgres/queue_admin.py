"""Ephemeral streams on PostgreSQL, off the hot path: dead letters and redrive, a
queue's counts, forgetting remembered ids, and what the queue table looks like."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from storage.errors import StorageError
from storage.page_tokens import DEAD_LETTERS, decode_position_token, encode_position_token
from storage.postgres.base import PostgresBase
from storage.postgres.rows import (
    EVENT_COLUMNS,
    event_from_row,
    payload_size,
    split_cut,
    within_budget,
)
from storage.records import (
    IN_FLIGHT_AGE_BOUNDS,
    DeadLetter,
    DeadLetterPage,
    QueueTableStats,
    StreamMetadata,
    StreamType,
)
from storage.rules import EXPIRED_REASON, FORGET_BATCH_SIZE, check_stream_type, first_page

log = logging.getLogger(__name__)


class RedriveOutcome(enum.StrEnum):
    """What event_streaming.redrive_dead_letters (migrations/006_queue_features.sql) did."""

    REDRIVEN = "redriven"
    NOT_FOUND = "not_found"
    WRONG_TYPE = "wrong_type"


STREAM_SQL = """
SELECT stream_id, stream_type, max_delivery_attempts
  FROM event_streaming.streams WHERE stream_name = $1
"""
BURY_EXPIRED_SQL = "SELECT event_streaming.bury_expired_messages($1, $2, $3)"
_DEAD_LETTER_COLUMNS = (
    "dead_letter_id",
    "queue_offset",
    "created_at",
    "delivery_attempts",
    "reason",
    "dead_lettered_at",
    *(c.strip() for c in EVENT_COLUMNS.split(",")),
)
_DEAD_LETTER_PAGE = f"""
SELECT {", ".join(f"d.{c}" for c in _DEAD_LETTER_COLUMNS)}, {payload_size("d")} AS size
  FROM event_streaming.dead_letters d
 WHERE d.stream_id = $1 AND d.dead_letter_id > $2
 ORDER BY d.dead_letter_id
 LIMIT $3
"""
LIST_DEAD_LETTERS_SQL = within_budget(
    _DEAD_LETTER_PAGE, _DEAD_LETTER_COLUMNS, "dead_letter_id", "$4"
)

REDRIVE_SQL = "SELECT * FROM event_streaming.redrive_dead_letters($1, $2, $3)"

# Messages due for another delivery with none left are dead letters in all but
# place (Dequeue never hands them out again), so they count as dead-lettered here.
QUEUE_COUNTS_SQL = """
WITH s AS (
    SELECT stream_id, max_delivery_attempts FROM event_streaming.streams WHERE stream_name = $1
)
SELECT q.*, (SELECT count(*) FROM event_streaming.dead_letters d
              WHERE d.stream_id = (SELECT stream_id FROM s)) AS dead_letters
  FROM (
    SELECT count(*) FILTER (WHERE m.lease_until > now()) AS in_flight,
           count(*) FILTER (WHERE m.exhausted) AS expired,
           count(*) AS messages,
           min(m.queue_offset) AS oldest_offset,
           min(m.created_at) AS oldest_at,
           max(m.created_at) AS newest_at,
           min(m.created_at) FILTER (WHERE NOT m.exhausted) AS oldest_enqueued_at
      FROM (SELECT queue_offset, created_at, lease_until,
                   state = 1 AND visible_at <= now()
                   AND delivery_attempts >= (SELECT max_delivery_attempts FROM s) AS exhausted
              FROM event_streaming.queue_messages
             WHERE stream_id = (SELECT stream_id FROM s)) m
  ) q
"""

#: The queue tables whose dead rows the service vacuums itself when PostgreSQL has
#: not (autovacuum off, or behind), and how many dead rows it lets by first.
VACUUMED_TABLES = ("queue_messages", "queue_remembered_ids", "dead_letters")
VACUUM_DEAD_ROWS = 20_000
DEAD_ROWS_SQL = """
SELECT relname, n_dead_tup FROM pg_stat_user_tables
 WHERE schemaname = 'event_streaming' AND relname = ANY ($1::text[]) AND n_dead_tup >= $2
 ORDER BY relname
"""
# Never in a transaction; SKIP_LOCKED: a vacuum under way (another replica's, or
# autovacuum's) is left to finish on its own. Table names come from VACUUMED_TABLES.
VACUUM_SQL = "VACUUM (SKIP_LOCKED, ANALYZE) event_streaming.{table}"

# One bounded batch per statement (and so per transaction).
FORGET_BATCH_SQL = """
DELETE FROM event_streaming.queue_remembered_ids
 WHERE ctid = ANY (ARRAY(
       SELECT ctid FROM event_streaming.queue_remembered_ids
        WHERE forget_at <= coalesce($1, clock_timestamp())
        ORDER BY forget_at LIMIT $2))
"""

_AGE_BUCKETS = ",\n       ".join(
    f"count(*) FILTER (WHERE age <= {bound}) AS le_{i}"
    for i, bound in enumerate(IN_FLIGHT_AGE_BOUNDS)
)
# The database's own figures for the queue table, and its in-flight messages (a
# walk of the timed index: leased and delayed rows only) by age since enqueue.
TABLE_STATS_SQL = f"""
SELECT coalesce(t.n_dead_tup, 0) AS dead_tuples, coalesce(t.n_live_tup, 0) AS live_tuples,
       pg_table_size('event_streaming.queue_messages') AS table_bytes,
       pg_indexes_size('event_streaming.queue_messages') AS index_bytes,
       f.*
  FROM (SELECT {_AGE_BUCKETS},
               count(*) AS total
          FROM (SELECT extract(epoch FROM now() - created_at) AS age
                  FROM event_streaming.queue_messages
                 WHERE state = 1 AND lease_until > now()) a) f
  LEFT JOIN pg_stat_user_tables t ON t.relid = 'event_streaming.queue_messages'::regclass
"""


def _deleted_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 5000".
    return int(status.rsplit(" ", 1)[-1])


class PostgresQueueAdmin(PostgresBase):
    #: Dead rows a queue table gathers before the service vacuums it.
    vacuum_dead_rows = VACUUM_DEAD_ROWS

    async def list_dead_letters(
        self, stream_name: str, max_count: int, page_token: str
    ) -> DeadLetterPage:
        after = decode_position_token(DEAD_LETTERS, page_token)
        async with self.db.transaction() as session:
            stream = await session.fetchrow(STREAM_SQL, stream_name)
            if stream is None:
                return DeadLetterPage((), "")
            check_stream_type(stream_name, stream["stream_type"], StreamType.EPHEMERAL)
            if stream["stream_type"] is None:
                return DeadLetterPage((), "")
            await session.fetchval(
                BURY_EXPIRED_SQL,
                stream["stream_id"],
                stream["max_delivery_attempts"],
                EXPIRED_REASON,
            )
            rows = await session.fetch(
                LIST_DEAD_LETTERS_SQL,
                stream["stream_id"],
                after,
                max_count + 1,
                self.page_bytes,
            )
        fitting, left_out = split_cut(rows)
        page, more = first_page(fitting, max_count)
        more = more or left_out is not None
        letters = tuple(
            DeadLetter(
                event=event_from_row(stream_name, r["queue_offset"], r),
                delivery_attempts=r["delivery_attempts"],
                reason=r["reason"],
                dead_lettered_at=r["dead_lettered_at"],
            )
            for r in page
        )
        token = encode_position_token(DEAD_LETTERS, page[-1]["dead_letter_id"]) if more else ""
        return DeadLetterPage(letters, token)

    async def redrive_dead_letters(self, stream_name: str, event_ids: Sequence[UUID]) -> int:
        row = await self.db.fetchrow(
            REDRIVE_SQL, stream_name, list(event_ids) or None, EXPIRED_REASON
        )
        assert row is not None
        if RedriveOutcome(row["outcome"]) is RedriveOutcome.WRONG_TYPE:
            check_stream_type(stream_name, row["actual_type"], StreamType.EPHEMERAL)
        redriven: int = row["redriven"]
        if redriven > 0:
            self._announce(stream_name)
        return redriven

    async def _queue_metadata(self, row: Any) -> StreamMetadata:
        """Queue-shaped metadata for a stream found by METADATA_SQL (log.py)."""
        counts = await self.db.fetchrow(QUEUE_COUNTS_SQL, row["stream_name"])
        assert counts is not None
        in_flight: int = counts["in_flight"]
        expired: int = counts["expired"]
        messages: int = counts["messages"]
        oldest = counts["oldest_offset"]
        return StreamMetadata(
            stream_name=row["stream_name"],
            stream_type=StreamType.EPHEMERAL,
            length=row["next_offset"],
            retained_count=messages - expired,
            oldest_offset=-1 if oldest is None else oldest,
            newest_offset=row["next_offset"] - 1,
            oldest_event_timestamp=counts["oldest_at"],
            newest_event_timestamp=counts["newest_at"],
            created_at=row["created_at"],
            pending_count=messages - in_flight - expired,
            in_flight_count=in_flight,
            dead_letter_count=counts["dead_letters"] + expired,
            oldest_message_enqueued_at=counts["oldest_enqueued_at"],
        )

    async def _forget_ids(self, now: datetime | None) -> int:
        """Forget the remembered queue ids whose deduplication window has passed, a
        bounded batch per statement."""
        forgotten = 0
        while True:
            deleted = _deleted_count(
                await self.db.execute(FORGET_BATCH_SQL, now, FORGET_BATCH_SIZE)
            )
            forgotten += deleted
            if deleted < FORGET_BATCH_SIZE:
                return forgotten

    async def _vacuum_queue_tables(self) -> list[str]:
        """VACUUM the queue tables that have gathered VACUUM_DEAD_ROWS dead rows
        (a work queue deletes or replaces nearly every row it writes): what
        autovacuum does with the settings of migration 006, done by the service
        when autovacuum is off or has not come round yet. Returns the tables
        vacuumed; a refusal (the role may not vacuum) is logged, not raised."""
        rows = await self.db.fetch(DEAD_ROWS_SQL, list(VACUUMED_TABLES), self.vacuum_dead_rows)
        done: list[str] = []
        for row in rows:
            table = row["relname"]
            if table not in VACUUMED_TABLES:
                continue
            try:
                await self.db.execute(VACUUM_SQL.format(table=table))
            except StorageError as exc:
                log.warning(
                    "cannot vacuum event_streaming.%s: %s",
                    table,
                    exc,
                    extra={"table": table, "dead_rows": row["n_dead_tup"]},
                )
                continue
            log.info(
                "vacuumed event_streaming.%s (%d dead rows)",
                table,
                row["n_dead_tup"],
                extra={"table": table, "dead_rows": row["n_dead_tup"]},
            )
            done.append(table)
        return done

    async def queue_table_stats(self) -> QueueTableStats | None:
        row = await self.db.fetchrow(TABLE_STATS_SQL)
        assert row is not None
        return QueueTableStats(
            dead_tuples=row["dead_tuples"],
            live_tuples=row["live_tuples"],
            table_bytes=row["table_bytes"],
            index_bytes=row["index_bytes"],
            in_flight_by_age=(
                *(row[f"le_{i}"] for i in range(len(IN_FLIGHT_AGE_BOUNDS))),
                row["total"],
            ),
        )

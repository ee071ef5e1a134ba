"""Ephemeral streams (work queues) on PostgreSQL.

Leases live in the message rows (migrations/002_queues.sql), so every server
process sharing the database sees the same queue and a killed process loses
nothing: its leases run out and the messages are delivered again. Each RPC is one
statement or one function call.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from storage.errors import DuplicateMessage, MessageNotFound, MessageNotHeld
from storage.page_tokens import DEAD_LETTERS, decode_position_token, encode_position_token
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
    AckResult,
    DeadLetter,
    DeadLetterPage,
    NewEvent,
    QueueMessage,
    StreamMetadata,
    StreamType,
)
from storage.rules import EXPIRED_REASON, check_stream_type, classify_acks, nack_reason
from storage.signals import Look, wait_for_items


class EnqueueOutcome(enum.StrEnum):
    """What event_streaming.enqueue_messages (migrations/004_clean_writes.sql) did."""

    ENQUEUED = "enqueued"
    #: An id (conflict_event_id) is in the queue or its dead-letter queue.
    DUPLICATE = "duplicate"
    #: The stream is not a queue (actual_type).
    WRONG_TYPE = "wrong_type"


class HeldOutcome(enum.StrEnum):
    """What nack_message and extend_visibility (migrations/004_clean_writes.sql) did."""

    RELEASED = "released"
    DEAD_LETTERED = "dead_lettered"
    EXTENDED = "extended"
    NOT_FOUND = "not_found"
    NOT_HELD = "not_held"
    WRONG_TYPE = "wrong_type"


class RedriveOutcome(enum.StrEnum):
    """What event_streaming.redrive_dead_letters did."""

    REDRIVEN = "redriven"
    NOT_FOUND = "not_found"
    WRONG_TYPE = "wrong_type"


ENQUEUE_SQL = (
    "SELECT * FROM event_streaming.enqueue_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)

_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in EVENT_COLUMNS.split(","))

# One statement: lock the oldest visible messages (skipping rows other consumers
# have locked), move those that already had their last allowed delivery to the
# dead-letter queue ($5 the reason), lease as many of the rest as fit the byte
# budget ($6). When nothing was leased it also reports when the earliest invisible
# message at the head becomes visible, so a long poll knows when to look again.
#
# Written so that the planner walks the primary key in queue order and stops at
# the LIMIT even when its statistics are wrong (a young table looks empty, and one
# huge queue among many small ones looks small), rather than reading the whole
# queue and sorting it: the stream lookups are scalar subqueries, the LIMIT is a
# subquery (so the planner assumes it takes a small fraction of the rows and
# prefers the ordered index scan), and the picked rows go on as arrays, updated by
# key.
DEQUEUE_SQL = f"""
WITH s AS (
    SELECT stream_id, stream_type, max_delivery_attempts, default_visibility_timeout
      FROM event_streaming.streams WHERE stream_name = $1
), picked AS (
    SELECT m.queue_offset,
           m.delivery_attempts >= (SELECT max_delivery_attempts FROM s) AS exhausted,
           {payload_size("m")} AS size
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = (SELECT stream_id FROM s) AND (SELECT stream_type FROM s) = 2
       AND m.visible_at <= now()
     ORDER BY m.queue_offset
     LIMIT (SELECT $4::integer)
       FOR UPDATE SKIP LOCKED
), buried AS (
    SELECT event_streaming.bury_messages(
               (SELECT stream_id FROM s), ARRAY(SELECT queue_offset FROM picked WHERE exhausted),
               $5) AS moved
), chosen AS (
    SELECT c.queue_offset FROM (
        SELECT queue_offset, sum(size) OVER (ORDER BY queue_offset) AS running,
               row_number() OVER (ORDER BY queue_offset) AS rn
          FROM picked WHERE NOT exhausted
    ) c
     WHERE c.rn = 1 OR c.running <= $6
), leased AS (
    UPDATE event_streaming.queue_messages m
       SET visible_at = now() + COALESCE($3::interval, (SELECT default_visibility_timeout FROM s)),
           delivery_attempts = m.delivery_attempts + 1,
           consumer_id = $2
     WHERE m.stream_id = (SELECT stream_id FROM s)
       AND m.queue_offset = ANY (ARRAY(SELECT queue_offset FROM chosen))
    RETURNING m.queue_offset, m.visible_at, m.delivery_attempts, m.created_at, {_MESSAGE_COLUMNS}
)
SELECT s.stream_type, (SELECT moved FROM buried) AS buried, now() AS db_now,
       CASE WHEN NOT EXISTS (SELECT 1 FROM leased) THEN (
           SELECT min(h.visible_at) FROM (
               SELECT visible_at FROM event_streaming.queue_messages
                WHERE stream_id = (SELECT stream_id FROM s)
                ORDER BY queue_offset LIMIT (SELECT 1000)) h
            WHERE h.visible_at > now())
       END AS next_visible_at,
       l.*
  FROM s LEFT JOIN leased l ON true
 ORDER BY l.queue_offset
"""

# The holder check is in the DELETE itself: when another consumer's dequeue has
# re-leased the row meanwhile, the DELETE re-reads it, sees the new consumer_id
# and leaves it alone. An ack after the lease ran out succeeds while nobody else
# has dequeued the message since (the contract), even when that lease was its last
# allowed delivery and the message already counts as dead-lettered: the consumer
# did finish with it, and it never left the queue. (Nack and ExtendVisibility of
# such a message find it dead instead: it would go back to the queue or take the
# nack's reason.) Once a listing, redrive or dequeue has moved it to the
# dead-letter queue, the ack finds nothing.
#
# The ids are passed through a subquery so that the planner cannot see how many
# there are and always looks them up in the (stream_id, event_id) index, rather
# than reading the whole queue when its statistics are young and say the queue is
# small.
ACKNOWLEDGE_SQL = """
WITH s AS (
    SELECT stream_id, stream_type FROM event_streaming.streams WHERE stream_name = $1
), acked AS (
    DELETE FROM event_streaming.queue_messages m
     WHERE m.stream_id = (SELECT stream_id FROM s) AND (SELECT stream_type FROM s) = 2
       AND m.event_id = ANY ((SELECT $3::uuid[])::uuid[]) AND m.consumer_id = $2
    RETURNING m.event_id
)
SELECT (SELECT stream_type FROM s) AS stream_type, a.acknowledged,
       -- Which of the others are still there (NOT_HELD rather than NOT_FOUND);
       -- not even looked up when every id was acknowledged.
       CASE WHEN cardinality(a.acknowledged) < cardinality($3::uuid[]) THEN
           ARRAY(SELECT m.event_id FROM event_streaming.queue_messages m
                  WHERE m.stream_id = (SELECT stream_id FROM s)
                    AND m.event_id = ANY ((SELECT $3::uuid[])::uuid[]))
       END AS present
  FROM (SELECT ARRAY(SELECT event_id FROM acked) AS acknowledged) a
"""

NACK_SQL = "SELECT * FROM event_streaming.nack_message($1, $2, $3, $4, $5, $6)"
EXTEND_SQL = "SELECT * FROM event_streaming.extend_visibility($1, $2, $3, $4, $5)"

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

# Messages whose last allowed lease ran out are dead letters in all but place
# (Dequeue never hands them out again), so they count as dead-lettered here.
QUEUE_COUNTS_SQL = """
WITH s AS (
    SELECT stream_id, max_delivery_attempts FROM event_streaming.streams WHERE stream_name = $1
)
SELECT q.*, (SELECT count(*) FROM event_streaming.dead_letters d
              WHERE d.stream_id = (SELECT stream_id FROM s)) AS dead_letters
  FROM (
    SELECT count(*) FILTER (WHERE m.consumer_id IS NOT NULL AND m.visible_at > now())
               AS in_flight,
           count(*) FILTER (WHERE m.visible_at <= now()
                              AND m.delivery_attempts >= (SELECT max_delivery_attempts FROM s))
               AS expired,
           count(*) AS messages,
           min(m.queue_offset) AS oldest_offset,
           min(m.created_at) AS oldest_at,
           max(m.created_at) AS newest_at
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = (SELECT stream_id FROM s)
  ) q
"""


def _seconds_until(later: datetime | None, now: datetime) -> float | None:
    return None if later is None else max(0.0, (later - now).total_seconds())


class PostgresQueue(PostgresBase):
    async def enqueue(self, stream_name: str, events: Sequence[NewEvent]) -> Sequence[UUID]:
        row = await self.db.fetchrow(ENQUEUE_SQL, stream_name, *event_arrays(events))
        assert row is not None
        outcome = EnqueueOutcome(row["outcome"])
        if outcome is EnqueueOutcome.WRONG_TYPE:
            check_stream_type(stream_name, row["actual_type"], StreamType.EPHEMERAL)
        if outcome is EnqueueOutcome.DUPLICATE:
            raise DuplicateMessage(stream_name, row["conflict_event_id"])
        self._announce(stream_name)
        return [e.event_id for e in events]

    async def dequeue(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
        wait_time: timedelta = timedelta(0),
    ) -> Sequence[QueueMessage]:
        async def look() -> Look[QueueMessage]:
            rows = await self.db.fetch(
                DEQUEUE_SQL,
                stream_name,
                consumer_id,
                visibility_timeout,
                max_messages,
                EXPIRED_REASON,
                self.page_bytes,
            )
            if not rows:
                return Look()
            first = rows[0]
            check_stream_type(stream_name, first["stream_type"], StreamType.EPHEMERAL)
            messages = [
                QueueMessage(
                    event=event_from_row(stream_name, r["queue_offset"], r),
                    delivery_attempt=r["delivery_attempts"],
                    visible_until=r["visible_at"],
                )
                for r in rows
                if r["queue_offset"] is not None
            ]
            return Look(
                messages,
                next_visible=_seconds_until(first["next_visible_at"], first["db_now"]),
                # The head held only dead letters, now buried: look behind them.
                again=bool(first["buried"]),
            )

        # Other replicas' writes arrive by NOTIFY (and the notifier's watch finds
        # one that was lost); a lease or delay running out, by the look's own timer.
        return await wait_for_items(self.signals, stream_name, wait_time, look)

    async def acknowledge(
        self, stream_name: str, consumer_id: str, event_ids: Sequence[UUID]
    ) -> AckResult:
        row = await self.db.fetchrow(ACKNOWLEDGE_SQL, stream_name, consumer_id, list(event_ids))
        assert row is not None
        check_stream_type(stream_name, row["stream_type"], StreamType.EPHEMERAL)
        return classify_acks(event_ids, row["acknowledged"], row["present"] or ())

    async def nack(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: UUID,
        delay: timedelta,
        reason: str,
    ) -> None:
        row = await self.db.fetchrow(
            NACK_SQL,
            stream_name,
            consumer_id,
            event_id,
            delay,
            nack_reason(reason),
            EXPIRED_REASON,
        )
        assert row is not None
        outcome = self._held_outcome(stream_name, consumer_id, event_id, row)
        if outcome is HeldOutcome.RELEASED:
            self._announce(stream_name)

    async def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: UUID,
        visibility_timeout: timedelta,
    ) -> datetime:
        row = await self.db.fetchrow(
            EXTEND_SQL, stream_name, consumer_id, event_id, visibility_timeout, EXPIRED_REASON
        )
        assert row is not None
        self._held_outcome(stream_name, consumer_id, event_id, row)
        visible_until: datetime = row["visible_until"]
        return visible_until

    @staticmethod
    def _held_outcome(stream_name: str, consumer_id: str, event_id: UUID, row: Any) -> HeldOutcome:
        """The outcome of a nack or extend; raises for those that refused."""
        outcome = HeldOutcome(row["outcome"])
        if outcome is HeldOutcome.WRONG_TYPE:
            check_stream_type(stream_name, row["actual_type"], StreamType.EPHEMERAL)
        if outcome is HeldOutcome.NOT_FOUND:
            raise MessageNotFound(stream_name, event_id)
        if outcome is HeldOutcome.NOT_HELD:
            raise MessageNotHeld(stream_name, event_id, consumer_id)
        return outcome

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
        page, left_out = split_cut(rows)
        more = left_out is not None or len(page) > max_count
        page = page[:max_count]
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
        )

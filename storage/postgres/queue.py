"""Ephemeral streams (work queues) on PostgreSQL: the hot path (enqueue, lease,
acknowledge, nack, extend, release).

Leases live in the message rows (migrations/002_queues.sql, 006_queue_features.sql),
so every server process sharing the database sees the same queue and a killed
process loses nothing: its leases run out and the messages are delivered again.
Each RPC is one statement or one function call.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from storage.errors import MessageNotFound, MessageNotHeld
from storage.postgres.base import PostgresBase
from storage.postgres.rows import EVENT_COLUMNS, event_arrays, event_from_row, payload_size
from storage.receipts import Receipt
from storage.records import (
    AckResult,
    EnqueueResult,
    MessageRef,
    NewEvent,
    QueueMessage,
    StreamType,
    event_id_of,
)
from storage.rules import (
    EXPIRED_REASON,
    RELEASED_REASON,
    check_stream_type,
    classify_acks,
    nack_reason,
)
from storage.signals import Look


class EnqueueOutcome(enum.StrEnum):
    """What event_streaming.enqueue_messages (migrations/006_queue_features.sql) did."""

    #: The messages not listed as duplicates were written.
    ENQUEUED = "enqueued"
    #: The stream is not a queue (actual_type).
    WRONG_TYPE = "wrong_type"


class HeldOutcome(enum.StrEnum):
    """What give_back_messages and extend_visibility (006) did with a message."""

    RELEASED = "released"
    DEAD_LETTERED = "dead_lettered"
    EXTENDED = "extended"
    NOT_FOUND = "not_found"
    NOT_HELD = "not_held"
    WRONG_TYPE = "wrong_type"


#: Outcomes of give_back_messages that change the queue.
_GIVEN_BACK = frozenset({HeldOutcome.RELEASED, HeldOutcome.DEAD_LETTERED})

ENQUEUE_SQL = (
    "SELECT * FROM event_streaming.enqueue_messages("
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)

_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in EVENT_COLUMNS.split(","))

# One statement. Candidates come from the two partial indexes of 006: the ready
# messages in queue order, from the low-water mark $8 on (when it belongs to this
# stream, $7; see _ReadyMarks), and the due timed ones (leases, delays and retry
# delays run out). Both are locked skipping rows other consumers have locked;
# those that already had their last allowed delivery go to the dead-letter queue
# ($5 the reason), and the oldest of the rest are leased, as many as fit the byte
# budget ($6). Leased rows become timed: due again when the lease ends, plus the
# retry delay unless that was their last allowed delivery.
#
# It also reports whether visible messages were left behind (cut: by the byte
# budget, or by max_messages when both indexes offered rows); the stream's
# low-water mark for the next call (the first ready row, or the next position
# when there is none, in this statement's snapshot: ready rows only ever appear at
# new positions, so none can appear below it); and when fewer than asked were
# leased, when the earliest timed row becomes due.
#
# Written so that the planner walks the indexes in order and stops at the LIMIT
# even when its statistics are wrong: the stream lookups are scalar subqueries and
# the LIMIT is a subquery; the rows picked (and locked) are updated by their ctid,
# so no plan can look them up through another index of the stream's rows.
DEQUEUE_SQL = f"""
WITH s AS (
    SELECT stream_id, stream_type, next_offset, max_delivery_attempts,
           default_visibility_timeout, retry_initial_delay, retry_max_delay, retry_multiplier
      FROM event_streaming.streams WHERE stream_name = $1
), fresh AS (
    SELECT m.ctid, m.queue_offset, false AS exhausted, {payload_size("m")} AS size
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = (SELECT stream_id FROM s) AND (SELECT stream_type FROM s) = 2
       AND m.state = 0
       AND m.queue_offset >= (SELECT CASE WHEN stream_id = $7 THEN $8::bigint ELSE 0 END FROM s)
     ORDER BY m.queue_offset
     LIMIT (SELECT $4::integer)
       FOR NO KEY UPDATE SKIP LOCKED
), due AS (
    SELECT m.ctid, m.queue_offset,
           m.delivery_attempts >= (SELECT max_delivery_attempts FROM s) AS exhausted,
           {payload_size("m")} AS size
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = (SELECT stream_id FROM s) AND (SELECT stream_type FROM s) = 2
       AND m.state = 1 AND m.visible_at <= now()
     ORDER BY m.visible_at
     LIMIT (SELECT $4::integer)
       FOR NO KEY UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM fresh UNION ALL SELECT * FROM due
), buried AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM picked WHERE exhausted) THEN
               event_streaming.bury_messages(
                   (SELECT stream_id FROM s),
                   ARRAY(SELECT queue_offset FROM picked WHERE exhausted), $5)
           ELSE 0 END AS moved
), chosen AS (
    SELECT c.ctid FROM (
        SELECT ctid, sum(size) OVER (ORDER BY queue_offset) AS running,
               row_number() OVER (ORDER BY queue_offset) AS rn
          FROM picked WHERE NOT exhausted
    ) c
     WHERE c.rn <= $4 AND (c.rn = 1 OR c.running <= $6)
), leased AS (
    UPDATE event_streaming.queue_messages m
       SET state = 1,
           consumer_id = $2,
           delivery_id = gen_random_uuid(),
           delivery_attempts = m.delivery_attempts + 1,
           lease_until = l.lease_end,
           visible_at = l.lease_end + CASE
               WHEN m.delivery_attempts + 1 >= (SELECT max_delivery_attempts FROM s)
                 OR (SELECT retry_initial_delay FROM s) <= interval '0'
               THEN interval '0'
               ELSE event_streaming.retry_delay(
                   (SELECT retry_initial_delay FROM s), (SELECT retry_max_delay FROM s),
                   (SELECT retry_multiplier FROM s), m.delivery_attempts + 1)
               END
      FROM (SELECT now() + COALESCE($3::interval, (SELECT default_visibility_timeout FROM s))
                   AS lease_end) l
     WHERE m.ctid = ANY (ARRAY(SELECT ctid FROM chosen))
    RETURNING m.queue_offset, m.lease_until, m.delivery_attempts, m.delivery_id, m.created_at,
              {_MESSAGE_COLUMNS}
)
SELECT s.stream_type, s.stream_id, (SELECT moved FROM buried) AS buried, now() AS db_now,
       (SELECT count(*) FROM picked WHERE NOT exhausted) > (SELECT count(*) FROM chosen)
           AS cut,
       coalesce((SELECT m.queue_offset FROM event_streaming.queue_messages m
                  WHERE m.stream_id = (SELECT stream_id FROM s) AND m.state = 0
                    AND m.queue_offset >= (SELECT CASE WHEN stream_id = $7 THEN $8::bigint
                                                       ELSE 0 END FROM s)
                  ORDER BY m.queue_offset LIMIT 1), s.next_offset) AS ready_from,
       CASE WHEN (SELECT count(*) FROM leased) < $4 THEN (
           SELECT m.visible_at FROM event_streaming.queue_messages m
            WHERE m.stream_id = (SELECT stream_id FROM s) AND m.state = 1
              AND m.visible_at > now()
            ORDER BY m.visible_at LIMIT 1)
       END AS next_visible_at,
       l.*
  FROM s LEFT JOIN leased l ON true
 ORDER BY l.queue_offset
"""

ACKNOWLEDGE_SQL = "SELECT * FROM event_streaming.acknowledge_messages($1, $2, $3, $4, $5)"
GIVE_BACK_SQL = "SELECT * FROM event_streaming.give_back_messages($1, $2, $3, $4, $5, $6, $7)"
EXTEND_SQL = "SELECT * FROM event_streaming.extend_visibility($1, $2, $3, $4, $5, $6)"

#: Queues whose low-water mark a process keeps (the most recently used).
MAX_READY_MARKS = 10_000


class _ReadyMarks:
    """Per queue, the position below which the queue has no ready message left, as
    the last dequeue of this process saw it: the next one starts its walk of the
    ready index there, never over the rows leased or acknowledged before it (dead
    index entries until vacuum). Kept with the stream's id, so that a queue
    deleted and made again under the same name starts from scratch."""

    def __init__(self) -> None:
        self._marks: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def get(self, stream_name: str) -> tuple[int | None, int]:
        stream_id, position = self._marks.get(stream_name, (None, 0))
        return stream_id, position

    def update(self, stream_name: str, stream_id: int, position: int) -> None:
        known = self._marks.get(stream_name)
        if known is not None and known[0] == stream_id:
            position = max(position, known[1])  # answers may come back out of order
        self._marks[stream_name] = (stream_id, position)
        self._marks.move_to_end(stream_name)
        while len(self._marks) > MAX_READY_MARKS:
            self._marks.popitem(last=False)


def _seconds_until(later: datetime | None, now: datetime) -> float | None:
    return None if later is None else max(0.0, (later - now).total_seconds())


def _ref_arrays(targets: Sequence[MessageRef]) -> tuple[list[UUID], list[UUID | None]]:
    """Ids, and per id the delivery its receipt names (None: named by id)."""
    ids: list[UUID] = []
    deliveries: list[UUID | None] = []
    for target in targets:
        if isinstance(target, Receipt):
            ids.append(target.event_id)
            deliveries.append(target.delivery_id)
        else:
            ids.append(target)
            deliveries.append(None)
    return ids, deliveries


class PostgresQueue(PostgresBase):
    _ready_marks: _ReadyMarks | None = None

    @property
    def ready_marks(self) -> _ReadyMarks:
        if self._ready_marks is None:
            self._ready_marks = _ReadyMarks()
        return self._ready_marks

    async def enqueue(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        deliver_at: datetime | None = None,
    ) -> EnqueueResult:
        row = await self.db.fetchrow(
            ENQUEUE_SQL,
            stream_name,
            *event_arrays(events),
            deliver_at,
        )
        assert row is not None
        if EnqueueOutcome(row["outcome"]) is EnqueueOutcome.WRONG_TYPE:
            check_stream_type(stream_name, row["actual_type"], StreamType.EPHEMERAL)
        duplicates = tuple(row["duplicate_event_ids"])
        if len(duplicates) < len(events):
            self._announce(stream_name)
        return EnqueueResult(tuple(e.event_id for e in events), duplicates)

    async def lease_messages(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
    ) -> Look[QueueMessage]:
        marks = self.ready_marks
        mark_stream, mark = marks.get(stream_name)
        rows = await self.db.fetch(
            DEQUEUE_SQL,
            stream_name,
            consumer_id,
            visibility_timeout,
            max_messages,
            EXPIRED_REASON,
            self.page_bytes,
            mark_stream,
            mark,
        )
        if not rows:
            return Look()
        first = rows[0]
        check_stream_type(stream_name, first["stream_type"], StreamType.EPHEMERAL)
        if first["ready_from"] is not None:
            marks.update(stream_name, first["stream_id"], first["ready_from"])
        messages = [
            QueueMessage(
                event=event_from_row(stream_name, r["queue_offset"], r),
                delivery_attempt=r["delivery_attempts"],
                visible_until=r["lease_until"],
                receipt=Receipt(r["event_id"], r["delivery_id"]),
            )
            for r in rows
            if r["queue_offset"] is not None
        ]
        if first["buried"]:
            # A key's next message may have been released: look again at once.
            self._announce(stream_name)
        return Look(
            messages,
            next_visible=_seconds_until(first["next_visible_at"], first["db_now"]),
            # The head held only dead letters, now buried: look behind them; or
            # the byte budget left visible messages behind.
            again=bool(first["buried"]) or bool(first["cut"]),
        )

    async def acknowledge(
        self, stream_name: str, consumer_id: str, targets: Sequence[MessageRef]
    ) -> AckResult:
        ids, deliveries = _ref_arrays(targets)
        by_id = [i for i, d in zip(ids, deliveries, strict=True) if d is None]
        named = [d for d in deliveries if d is not None]
        row = await self.db.fetchrow(ACKNOWLEDGE_SQL, stream_name, consumer_id, ids, by_id, named)
        assert row is not None
        check_stream_type(stream_name, row["actual_type"], StreamType.EPHEMERAL)
        acked = dict(zip(row["acknowledged"], row["deliveries"], strict=True))
        done = [
            t
            for t in targets
            if event_id_of(t) in acked
            and (not isinstance(t, Receipt) or acked[t.event_id] == t.delivery_id)
        ]
        if row["released"]:
            self._announce(stream_name)  # the next message of a key is deliverable
        return classify_acks(targets, done, row["present"])

    async def _give_back(
        self,
        stream_name: str,
        consumer_id: str,
        targets: Sequence[MessageRef],
        delay: timedelta | None,
        reason: str,
    ) -> list[Any]:
        ids, deliveries = _ref_arrays(targets)
        rows = await self.db.fetch(
            GIVE_BACK_SQL,
            stream_name,
            consumer_id,
            ids,
            deliveries,
            delay,
            reason,
            EXPIRED_REASON,
        )
        if any(HeldOutcome(r["outcome"]) in _GIVEN_BACK for r in rows):
            self._announce(stream_name)
        return rows

    async def nack(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        delay: timedelta | None,
        reason: str,
    ) -> None:
        (row,) = await self._give_back(
            stream_name, consumer_id, [target], delay, nack_reason(reason)
        )
        self._held_outcome(stream_name, consumer_id, event_id_of(target), row)

    async def release(self, stream_name: str, consumer_id: str, receipts: Sequence[Receipt]) -> int:
        if not receipts:
            return 0
        rows = await self._give_back(
            stream_name, consumer_id, list(dict.fromkeys(receipts)), timedelta(0), RELEASED_REASON
        )
        return sum(HeldOutcome(r["outcome"]) in _GIVEN_BACK for r in rows)

    async def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        visibility_timeout: timedelta,
    ) -> datetime:
        event_id = event_id_of(target)
        row = await self.db.fetchrow(
            EXTEND_SQL,
            stream_name,
            consumer_id,
            event_id,
            target.delivery_id if isinstance(target, Receipt) else None,
            visibility_timeout,
            EXPIRED_REASON,
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

"""Ephemeral streams (work queues) for the in-memory backend.

No timers: leases and delays are entries in a heap ordered by the time they end,
looked at (and moved to the ready heap) whenever someone dequeues. Each method
runs without awaiting between reading and writing state, so it is atomic.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

from storage.errors import (
    DuplicateMessage,
    MessageNotFound,
    MessageNotHeld,
    StreamNotFound,
)
from storage.memory.base import MemoryBase
from storage.memory.state import MemoryStream, QueueEntry, QueueState, utc_now
from storage.page_tokens import DEAD_LETTERS, decode_position_token, encode_position_token
from storage.records import (
    AckResult,
    DeadLetter,
    DeadLetterPage,
    NewEvent,
    QueueMessage,
    StreamMetadata,
    StreamType,
)
from storage.rules import (
    EXPIRED_REASON,
    classify_acks,
    first_page,
    nack_reason,
    within_budget,
)
from storage.signals import Look, wait_for_items


def _schedule(queue: QueueState, entry: QueueEntry, now: datetime) -> None:
    """File the entry's current state in the heap it belongs to, under a version
    no item in either heap has had before."""
    queue.next_version += 1
    entry.version = queue.next_version
    item_id = entry.event.event_id
    if entry.visible_at <= now:
        heapq.heappush(queue.ready, (entry.event.offset, entry.version, item_id))
    else:
        heapq.heappush(
            queue.waiting, (entry.visible_at, entry.event.offset, entry.version, item_id)
        )


def _bury(queue: QueueState, entry: QueueEntry, reason: str, now: datetime) -> None:
    """Move a message to the dead-letter queue."""
    del queue.messages[entry.event.event_id]
    queue.dead_letters[entry.event.event_id] = (
        queue.next_dead_letter,
        DeadLetter(entry.event, entry.delivery_attempts, reason, now),
    )
    queue.next_dead_letter += 1


def _exhausted(entry: QueueEntry, max_attempts: int, now: datetime) -> bool:
    """Its last allowed lease has run out: a dead letter, wherever it still is."""
    return entry.visible_at <= now and entry.delivery_attempts >= max_attempts


def _bury_expired(stream: MemoryStream, now: datetime) -> None:
    max_attempts = stream.configuration.max_delivery_attempts
    for entry in sorted(
        (e for e in stream.queue.messages.values() if _exhausted(e, max_attempts, now)),
        key=lambda e: e.event.offset,
    ):
        _bury(stream.queue, entry, EXPIRED_REASON, now)


class MemoryQueue(MemoryBase):
    async def enqueue(self, stream_name: str, events: Sequence[NewEvent]) -> Sequence[UUID]:
        found = self._writable(stream_name, StreamType.EPHEMERAL)
        if found is not None:
            for new in events:
                if new.event_id in found.queue.messages or new.event_id in found.queue.dead_letters:
                    raise DuplicateMessage(stream_name, new.event_id)
        stream = self._written(stream_name, found, StreamType.EPHEMERAL)
        queue = stream.queue
        now = utc_now()
        for new in events:
            entry = QueueEntry(
                event=new.recorded(stream_name, stream.next_offset, now), visible_at=now
            )
            stream.next_offset += 1
            queue.messages[new.event_id] = entry
            _schedule(queue, entry, now)
        self.signals.notify(stream_name)
        return [e.event_id for e in events]

    def _lease(
        self,
        stream: MemoryStream,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
    ) -> list[QueueMessage]:
        """Lease up to max_messages visible messages, oldest first."""
        queue = stream.queue
        config = stream.configuration
        now = utc_now()
        if visibility_timeout is None:
            visibility_timeout = config.default_visibility_timeout
        visible_until = now + visibility_timeout
        while queue.waiting and queue.waiting[0][0] <= now:
            _, offset, version, event_id = heapq.heappop(queue.waiting)
            entry = queue.messages.get(event_id)
            if entry is not None and entry.version == version:
                heapq.heappush(queue.ready, (offset, version, event_id))
        leased: list[QueueMessage] = []
        size = 0
        while queue.ready and len(leased) < max_messages:
            _, version, event_id = queue.ready[0]
            entry = queue.messages.get(event_id)
            if entry is None or entry.version != version:
                heapq.heappop(queue.ready)
                continue
            if entry.delivery_attempts >= config.max_delivery_attempts:
                heapq.heappop(queue.ready)
                _bury(queue, entry, EXPIRED_REASON, now)
                continue
            size += entry.event.size
            if leased and size > self.page_bytes:
                break  # the byte budget: it stays at the head for the next dequeue
            heapq.heappop(queue.ready)
            entry.delivery_attempts += 1
            entry.consumer_id = consumer_id
            entry.visible_at = visible_until
            _schedule(queue, entry, now)
            leased.append(QueueMessage(entry.event, entry.delivery_attempts, visible_until))
        return leased

    async def dequeue(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
        wait_time: timedelta = timedelta(0),
    ) -> Sequence[QueueMessage]:
        async def look() -> Look[QueueMessage]:
            try:
                stream = self._find(stream_name, StreamType.EPHEMERAL)
            except StreamNotFound:
                return Look()  # an enqueue may create it while we wait
            leased = self._lease(stream, consumer_id, visibility_timeout, max_messages)
            if leased or not stream.queue.waiting:
                return Look(leased)
            # Possibly stale (acked since); then we just look once more.
            due = (stream.queue.waiting[0][0] - utc_now()).total_seconds()
            return Look(next_visible=max(0.0, due))

        return await wait_for_items(self.signals, stream_name, wait_time, look)

    def _queue_or_none(self, stream_name: str) -> MemoryStream | None:
        """The queue, None when the stream does not exist; WrongStreamType for a log."""
        try:
            return self._find(stream_name, StreamType.EPHEMERAL)
        except StreamNotFound:
            return None

    async def acknowledge(
        self, stream_name: str, consumer_id: str, event_ids: Sequence[UUID]
    ) -> AckResult:
        """Delete held messages. A late ack succeeds while nobody else has dequeued
        the message since (the contract), even when the lease that ran out was its
        last allowed delivery and the message already counts as dead-lettered: the
        consumer did finish with it, and it never left the queue. Once a listing,
        redrive or dequeue has moved it to the dead-letter queue it is not found."""
        stream = self._queue_or_none(stream_name)
        messages = stream.queue.messages if stream is not None else {}
        done = [
            event_id
            for event_id in dict.fromkeys(event_ids)
            if event_id in messages and messages[event_id].consumer_id == consumer_id
        ]
        for event_id in done:
            del messages[event_id]
        return classify_acks(event_ids, done, messages.keys())

    def _held(self, stream_name: str, consumer_id: str, event_id: UUID) -> MemoryStream:
        """The stream of a message this consumer holds, for Nack and ExtendVisibility.

        A message whose last allowed lease has run out is a dead letter already
        (Dequeue never hands it out again, GetStreamMetadata counts it as one), so
        it goes to the dead-letter queue as its expiry left it and is not found,
        whoever asks. (Acknowledge is different: see there.)"""
        stream = self._queue_or_none(stream_name)
        if stream is None or event_id not in stream.queue.messages:
            raise MessageNotFound(stream_name, event_id)
        entry = stream.queue.messages[event_id]
        now = utc_now()
        if _exhausted(entry, stream.configuration.max_delivery_attempts, now):
            _bury(stream.queue, entry, EXPIRED_REASON, now)
            raise MessageNotFound(stream_name, event_id)
        if entry.consumer_id != consumer_id:
            raise MessageNotHeld(stream_name, event_id, consumer_id)
        return stream

    async def nack(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: UUID,
        delay: timedelta,
        reason: str,
    ) -> None:
        stream = self._held(stream_name, consumer_id, event_id)
        entry = stream.queue.messages[event_id]
        now = utc_now()
        if entry.delivery_attempts >= stream.configuration.max_delivery_attempts:
            _bury(stream.queue, entry, nack_reason(reason), now)
            return
        entry.consumer_id = None
        entry.visible_at = now + delay
        _schedule(stream.queue, entry, now)
        self.signals.notify(stream_name)

    async def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: UUID,
        visibility_timeout: timedelta,
    ) -> datetime:
        stream = self._held(stream_name, consumer_id, event_id)
        entry = stream.queue.messages[event_id]
        now = utc_now()
        entry.visible_at = now + visibility_timeout
        _schedule(stream.queue, entry, now)
        return entry.visible_at

    async def list_dead_letters(
        self, stream_name: str, max_count: int, page_token: str
    ) -> DeadLetterPage:
        after = decode_position_token(DEAD_LETTERS, page_token)
        stream = self._queue_or_none(stream_name)
        if stream is None:
            return DeadLetterPage((), "")
        _bury_expired(stream, utc_now())
        following = [
            (position, letter)
            for position, letter in stream.queue.dead_letters.values()
            if position > after
        ]
        page, more = first_page(following, max_count)
        fitting = within_budget(page, lambda item: item[1].event.size, self.page_bytes)
        more = more or len(fitting) < len(page)
        token = encode_position_token(DEAD_LETTERS, fitting[-1][0]) if more else ""
        return DeadLetterPage(tuple(letter for _, letter in fitting), token)

    async def redrive_dead_letters(self, stream_name: str, event_ids: Sequence[UUID]) -> int:
        stream = self._queue_or_none(stream_name)
        if stream is None:
            return 0
        now = utc_now()
        _bury_expired(stream, now)
        queue = stream.queue
        wanted = set(event_ids)
        chosen = [
            letter
            for _, letter in queue.dead_letters.values()
            if not wanted or letter.event.event_id in wanted
        ]
        for letter in chosen:
            del queue.dead_letters[letter.event.event_id]
            event = letter.event
            # Back at the end of the queue: a new position, the original timestamp.
            entry = QueueEntry(event=event._replace(offset=stream.next_offset), visible_at=now)
            stream.next_offset += 1
            queue.messages[event.event_id] = entry
            _schedule(queue, entry, now)
        if chosen:
            self.signals.notify(stream_name)
        return len(chosen)

    def _queue_metadata(self, stream: MemoryStream) -> StreamMetadata:
        now = utc_now()
        max_attempts = stream.configuration.max_delivery_attempts
        in_flight = expired = 0
        for entry in stream.queue.messages.values():
            if _exhausted(entry, max_attempts, now):
                expired += 1
            elif entry.consumer_id is not None and entry.visible_at > now:
                in_flight += 1
        entries = stream.queue.messages.values()
        oldest = min(entries, key=lambda e: e.event.offset, default=None)
        retained = len(stream.queue.messages) - expired
        return StreamMetadata(
            stream_name=stream.name,
            stream_type=StreamType.EPHEMERAL,
            length=stream.next_offset,
            retained_count=retained,
            oldest_offset=-1 if oldest is None else oldest.event.offset,
            newest_offset=stream.next_offset - 1,
            oldest_event_timestamp=min((e.event.timestamp for e in entries), default=None),
            newest_event_timestamp=max((e.event.timestamp for e in entries), default=None),
            created_at=stream.created_at,
            pending_count=retained - in_flight,
            in_flight_count=in_flight,
            dead_letter_count=len(stream.queue.dead_letters) + expired,
        )

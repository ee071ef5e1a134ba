"""Ephemeral streams (work queues) for the in-memory backend.

No timers: leases, delays and retry delays are entries in a heap ordered by the
time they end, looked at (and moved to the ready heap) whenever someone dequeues.
Messages of an ordering key wait, in neither heap, behind the first of their key
(``QueueState.keys``) until it leaves the queue. Each method runs without awaiting
between reading and writing state, so it is atomic.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from uuid import UUID

from storage.errors import MessageNotFound, MessageNotHeld, StreamNotFound
from storage.memory.base import MemoryBase
from storage.memory.state import MemoryStream, QueueEntry, QueueState, utc_now
from storage.page_tokens import DEAD_LETTERS, decode_position_token, encode_position_token
from storage.receipts import Receipt
from storage.records import (
    AckResult,
    DeadLetter,
    DeadLetterPage,
    EnqueueResult,
    MessageRef,
    NewEvent,
    QueueMessage,
    StreamConfiguration,
    StreamMetadata,
    StreamType,
    event_id_of,
)
from storage.rules import (
    EXPIRED_REASON,
    FORGET_BATCH_SIZE,
    RELEASED_REASON,
    classify_acks,
    first_page,
    nack_reason,
    retry_delay,
    within_budget,
)
from storage.signals import Look


def _schedule(queue: QueueState, entry: QueueEntry, now: datetime) -> None:
    """File the entry's current state in the heap it belongs to, under a version
    no item in either heap has had before (a parked entry goes in neither)."""
    queue.next_version += 1
    entry.version = queue.next_version
    if entry.parked:
        return
    item_id = entry.event.event_id
    if entry.visible_at <= now:
        heapq.heappush(queue.ready, (entry.event.offset, entry.version, item_id))
    else:
        heapq.heappush(
            queue.waiting, (entry.visible_at, entry.event.offset, entry.version, item_id)
        )


def _add(queue: QueueState, entry: QueueEntry, now: datetime) -> None:
    """Put a new entry in the queue: behind the messages of its ordering key, if
    it has one and they are there."""
    event_id = entry.event.event_id
    key = entry.event.ordering_key
    if key:
        waiting = queue.keys.setdefault(key, deque())
        entry.parked = bool(waiting)
        waiting.append(event_id)
    queue.messages[event_id] = entry
    _schedule(queue, entry, now)


def _remove(queue: QueueState, entry: QueueEntry, now: datetime) -> bool:
    """Take an entry out of the queue; the next message of its ordering key, if
    any, becomes deliverable (then True)."""
    event_id = entry.event.event_id
    del queue.messages[event_id]
    key = entry.event.ordering_key
    if not key:
        return False
    waiting = queue.keys[key]
    if waiting[0] == event_id:
        waiting.popleft()
    else:  # only a key's first message is ever delivered, so only it ever leaves
        waiting.remove(event_id)
    if not waiting:
        del queue.keys[key]
        return False
    following = queue.messages[waiting[0]]
    if not following.parked:
        return False
    following.parked = False
    _schedule(queue, following, now)
    return True


def _bury(queue: QueueState, entry: QueueEntry, reason: str, now: datetime) -> None:
    """Move a message to the dead-letter queue (releasing its ordering key)."""
    _remove(queue, entry, now)
    queue.dead_letters[entry.event.event_id] = (
        queue.next_dead_letter,
        DeadLetter(entry.event, entry.delivery_attempts, reason, now),
    )
    queue.next_dead_letter += 1


def _ready(
    queue: QueueState, max_attempts: int, now: datetime
) -> Iterator[tuple[tuple[int, int, UUID], QueueEntry]]:
    """The deliverable entries in queue order, with their ready-heap items, each
    taken off the heap as it is looked at; stale items are dropped, and messages
    that had their last allowed delivery are buried on the way."""
    while queue.ready:
        item = heapq.heappop(queue.ready)
        _, version, event_id = item
        entry = queue.messages.get(event_id)
        if entry is None or entry.version != version:
            continue
        if entry.delivery_attempts >= max_attempts:
            _bury(queue, entry, EXPIRED_REASON, now)
            continue
        yield item, entry


def _exhausted(entry: QueueEntry, max_attempts: int, now: datetime) -> bool:
    """Due for another delivery with none left: a dead letter, wherever it still is."""
    return entry.visible_at <= now and entry.delivery_attempts >= max_attempts


def _bury_expired(stream: MemoryStream, now: datetime) -> None:
    max_attempts = stream.configuration.max_delivery_attempts
    for entry in sorted(
        (e for e in stream.queue.messages.values() if _exhausted(e, max_attempts, now)),
        key=lambda e: e.event.offset,
    ):
        _bury(stream.queue, entry, EXPIRED_REASON, now)


def _next_visible(config: StreamConfiguration, entry: QueueEntry, lease_end: datetime) -> datetime:
    """When a leased entry may be delivered again if its lease runs out: at once
    on its last allowed delivery (it is then a dead letter), else after the
    stream's retry delay."""
    if entry.delivery_attempts >= config.max_delivery_attempts:
        return lease_end
    return lease_end + retry_delay(config, entry.delivery_attempts, random.random())


def _is_duplicate(queue: QueueState, event_id: UUID, now: datetime) -> bool:
    if event_id in queue.messages or event_id in queue.dead_letters:
        return True
    forget_at = queue.remembered.get(event_id)
    return forget_at is not None and forget_at > now


class MemoryQueue(MemoryBase):
    async def enqueue(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        deliver_at: datetime | None = None,
    ) -> EnqueueResult:
        found = self._writable(stream_name, StreamType.EPHEMERAL)
        now = utc_now()
        duplicates = (
            [e.event_id for e in events if _is_duplicate(found.queue, e.event_id, now)]
            if found is not None
            else []
        )
        ids = tuple(e.event_id for e in events)
        if len(duplicates) == len(events):
            return EnqueueResult(ids, tuple(duplicates))
        stream = self._written(stream_name, found, StreamType.EPHEMERAL)
        queue = stream.queue
        window = stream.configuration.deduplication_window
        skipped = set(duplicates)
        visible_at = now if deliver_at is None else max(now, deliver_at)
        for new in events:
            if new.event_id in skipped:
                continue
            entry = QueueEntry(
                event=new.recorded(stream_name, stream.next_offset, now), visible_at=visible_at
            )
            stream.next_offset += 1
            _add(queue, entry, now)
            if window > timedelta(0):
                queue.remembered[new.event_id] = now + window
                heapq.heappush(queue.forget_order, (now + window, new.event_id))
        self.signals.notify(stream_name)
        return EnqueueResult(ids, tuple(duplicates))

    def _lease(
        self,
        stream: MemoryStream,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
    ) -> tuple[list[QueueMessage], bool]:
        """Lease up to max_messages visible messages, oldest first; and whether the
        byte budget left visible ones behind."""
        queue = stream.queue
        config = stream.configuration
        now = utc_now()
        if visibility_timeout is None:
            visibility_timeout = config.default_visibility_timeout
        lease_end = now + visibility_timeout
        while queue.waiting and queue.waiting[0][0] <= now:
            _, offset, version, event_id = heapq.heappop(queue.waiting)
            entry = queue.messages.get(event_id)
            if entry is not None and entry.version == version:
                heapq.heappush(queue.ready, (offset, version, event_id))
        taken, left_out = within_budget(
            itertools.islice(_ready(queue, config.max_delivery_attempts, now), max_messages),
            lambda ready: ready[1].event.size,
            self.page_bytes,
        )
        if left_out is not None:
            # The byte budget: it goes back to the head for next time.
            heapq.heappush(queue.ready, left_out[0])
        leased: list[QueueMessage] = []
        for (_, _, event_id), entry in taken:
            entry.delivery_attempts += 1
            entry.consumer_id = consumer_id
            entry.lease_until = lease_end
            entry.delivery_id = uuid.uuid4()
            entry.visible_at = _next_visible(config, entry, lease_end)
            _schedule(queue, entry, now)
            leased.append(
                QueueMessage(
                    entry.event,
                    entry.delivery_attempts,
                    lease_end,
                    Receipt(event_id, entry.delivery_id),
                )
            )
        return leased, left_out is not None

    async def lease_messages(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
    ) -> Look[QueueMessage]:
        try:
            stream = self._find(stream_name, StreamType.EPHEMERAL)
        except StreamNotFound:
            return Look()  # an enqueue may create it while we wait
        leased, cut = self._lease(stream, consumer_id, visibility_timeout, max_messages)
        if cut or len(leased) >= max_messages or not stream.queue.waiting:
            # Cut short by the byte budget: more are visible (look again at once).
            return Look(leased, again=cut)
        # Possibly stale (acked since); then we just look once more.
        due = (stream.queue.waiting[0][0] - utc_now()).total_seconds()
        return Look(leased, next_visible=max(0.0, due))

    def _queue_or_none(self, stream_name: str) -> MemoryStream | None:
        """The queue, None when the stream does not exist; WrongStreamType for a log."""
        try:
            return self._find(stream_name, StreamType.EPHEMERAL)
        except StreamNotFound:
            return None

    async def acknowledge(
        self, stream_name: str, consumer_id: str, targets: Sequence[MessageRef]
    ) -> AckResult:
        """Delete held messages. A late ack succeeds while nobody else has dequeued
        the message since (the contract), even when the lease that ran out was its
        last allowed delivery and the message already counts as dead-lettered: the
        consumer did finish with it, and it never left the queue. Once a listing,
        redrive or dequeue has moved it to the dead-letter queue it is not found.
        A receipt acknowledges only while its delivery is the latest."""
        stream = self._queue_or_none(stream_name)
        if stream is None:
            return classify_acks(targets, (), ())
        queue = stream.queue
        present = {event_id_of(t) for t in targets if event_id_of(t) in queue.messages}
        done: list[MessageRef] = []
        freed = False
        now = utc_now()
        for target in dict.fromkeys(targets):
            entry = queue.messages.get(event_id_of(target))
            if entry is not None and _holds(entry, consumer_id, target):
                done.append(target)
                freed |= _remove(queue, entry, now)
        if freed:
            self.signals.notify(stream_name)  # the next message of a key is deliverable
        return classify_acks(targets, done, present)

    def _held(self, stream_name: str, consumer_id: str, target: MessageRef) -> MemoryStream:
        """The stream of a message this consumer holds (by this very delivery, for
        a receipt), for Nack and ExtendVisibility.

        A message whose last allowed lease has run out is a dead letter already
        (Dequeue never hands it out again, GetStreamMetadata counts it as one), so
        it goes to the dead-letter queue as its expiry left it and is not found,
        whoever asks. (Acknowledge is different: see there.)"""
        event_id = event_id_of(target)
        stream = self._queue_or_none(stream_name)
        if stream is None or event_id not in stream.queue.messages:
            raise MessageNotFound(stream_name, event_id)
        entry = stream.queue.messages[event_id]
        now = utc_now()
        if _exhausted(entry, stream.configuration.max_delivery_attempts, now):
            _bury(stream.queue, entry, EXPIRED_REASON, now)
            raise MessageNotFound(stream_name, event_id)
        if not _holds(entry, consumer_id, target):
            raise MessageNotHeld(stream_name, event_id, consumer_id)
        return stream

    def _give_back(
        self, stream: MemoryStream, entry: QueueEntry, delay: timedelta | None, reason: str
    ) -> None:
        """A nack of a held entry: dead-lettered with ``reason`` after its last
        allowed delivery, else visible again after ``delay`` (None: the retry
        delay)."""
        now = utc_now()
        config = stream.configuration
        if entry.delivery_attempts >= config.max_delivery_attempts:
            _bury(stream.queue, entry, reason, now)
            return
        if delay is None:
            delay = retry_delay(config, entry.delivery_attempts, random.random())
        entry.consumer_id = None
        entry.lease_until = None
        entry.visible_at = now + delay
        _schedule(stream.queue, entry, now)

    async def nack(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        delay: timedelta | None,
        reason: str,
    ) -> None:
        stream = self._held(stream_name, consumer_id, target)
        entry = stream.queue.messages[event_id_of(target)]
        self._give_back(stream, entry, delay, nack_reason(reason))
        self.signals.notify(stream_name)

    async def release(self, stream_name: str, consumer_id: str, receipts: Sequence[Receipt]) -> int:
        stream = self._queue_or_none(stream_name)
        if stream is None:
            return 0
        released = 0
        for receipt in dict.fromkeys(receipts):
            entry = stream.queue.messages.get(receipt.event_id)
            if entry is not None and _holds(entry, consumer_id, receipt):
                self._give_back(stream, entry, timedelta(0), RELEASED_REASON)
                released += 1
        if released:
            self.signals.notify(stream_name)
        return released

    async def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        visibility_timeout: timedelta,
    ) -> datetime:
        stream = self._held(stream_name, consumer_id, target)
        entry = stream.queue.messages[event_id_of(target)]
        now = utc_now()
        lease_end = now + visibility_timeout
        entry.lease_until = lease_end
        entry.visible_at = _next_visible(stream.configuration, entry, lease_end)
        _schedule(stream.queue, entry, now)
        return lease_end

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
        fitting, left_out = within_budget(page, lambda item: item[1].event.size, self.page_bytes)
        more = more or left_out is not None
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
            _add(queue, entry, now)
        if chosen:
            self.signals.notify(stream_name)
        return len(chosen)

    def _forget_ids(self, now: datetime) -> int:
        """Forget the remembered ids whose deduplication window has passed, in
        batches of FORGET_BATCH_SIZE (as the PostgreSQL backend does)."""
        forgotten = 0
        for stream in list(self._streams.values()):
            queue = stream.queue
            while queue.forget_order and queue.forget_order[0][0] <= now:
                for _ in range(min(FORGET_BATCH_SIZE, len(queue.forget_order))):
                    if queue.forget_order[0][0] > now:
                        break
                    forget_at, event_id = heapq.heappop(queue.forget_order)
                    if queue.remembered.get(event_id) == forget_at:
                        del queue.remembered[event_id]
                        forgotten += 1
        return forgotten

    def _queue_metadata(self, stream: MemoryStream) -> StreamMetadata:
        now = utc_now()
        max_attempts = stream.configuration.max_delivery_attempts
        in_flight = expired = 0
        oldest_enqueued: datetime | None = None
        for entry in stream.queue.messages.values():
            if _exhausted(entry, max_attempts, now):
                expired += 1
                continue
            if oldest_enqueued is None or entry.event.timestamp < oldest_enqueued:
                oldest_enqueued = entry.event.timestamp
            if entry.lease_until is not None and entry.lease_until > now:
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
            oldest_message_enqueued_at=oldest_enqueued,
        )


def _holds(entry: QueueEntry, consumer_id: str, target: MessageRef) -> bool:
    """Whether ``consumer_id`` holds the entry (by the delivery a receipt names)."""
    if entry.consumer_id != consumer_id:
        return False
    return not isinstance(target, Receipt) or entry.delivery_id == target.delivery_id

"""Live subscriptions: history from storage, then one CaughtUp, then live events.

A subscription keeps no queue of its own. It reads its history from storage a page
at a time and hands the events on one by one; the gRPC write applies flow control,
so a client that does not read simply pauses it (it holds one page, which storage
bounds in bytes, and fetches nothing more until the client drains it). Once a read
reaches the end of the stream it sends CaughtUp and follows the stream's
:class:`StreamTail`: the live end of the stream, read from storage *once per
process* for all its subscribers (a hundred subscribers of one stream cost one read
per write, not a hundred). The tail reads when the stream's wake-up fires: a write
in this process, or another replica's notification (storage.postgres.notifier).

- Order, no gaps, no duplicates: every event comes from storage in offset order, the
  tail covers a contiguous range of offsets, and a subscription's position only moves
  to the end of what it was handed.
- No write is missed between "nothing more" and "wait": the wake-up event is taken
  *before* each look (see :mod:`storage.signals`).
- Bounded memory: a tail keeps the newest events up to ``tail_events`` and
  ``tail_bytes``; a subscription holds one page or one slice of the tail. A
  subscriber that falls behind the tail is served from storage again, a page at a
  time, until it is back.
- Idle costs nothing: no timers and no re-reads while nothing is written (a lost
  cross-replica notification is the storage backend's to recover, with one query
  for every waited stream; see storage.signals).
- Cancellation (client gone, server stopping) releases everything: the last
  subscription of a stream stops its tail.

One :class:`Subscriptions` per server owns the tails and the subscriptions in
progress; it is made when the server starts and closed when it stops.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from server.errors import ServerShuttingDown
from server.validation import SubscribeArgs
from storage.errors import ConsumerOffsetNotFound
from storage.interface import EventStore
from storage.records import NO_FILTER, ReadFilter, ReadResult, RecordedEvent
from storage.signals import StreamSignals

#: Events read from storage per round trip (storage also bounds a page in bytes).
PAGE_SIZE = 500
#: Events a stream's tail keeps for subscribers that are a little behind.
TAIL_EVENTS = 1000
#: ... and the most bytes of payload it keeps (at least its newest slice).
TAIL_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """History has been delivered; ``next_offset`` is where live delivery starts."""

    next_offset: int


SubscriptionItem = RecordedEvent | CaughtUp


@dataclass(frozen=True, slots=True)
class _Slice:
    """Events of a stream read together: every retained event with an offset in
    ``[start, end)``, in offset order."""

    start: int
    end: int
    events: tuple[RecordedEvent, ...]
    size: int


def _offset(event: RecordedEvent) -> int:
    return event.offset


class StreamTail:
    """The live end of one stream in this process, shared by its subscriptions.

    One task reads from storage whatever was appended since its last read, whenever
    the stream's wake-up fires, and keeps the newest slices (about ``max_events``
    events and ``max_bytes`` of payload) covering ``[start, end)`` without a gap.
    """

    def __init__(
        self, store: EventStore, stream_name: str, start: int, max_events: int, max_bytes: int
    ) -> None:
        self.store = store
        self.stream_name = stream_name
        self.start = start
        self.end = start
        self.max_events = max_events
        self.max_bytes = max_bytes
        #: Set (and replaced) whenever ``end`` moves or the tail fails.
        self.changed = asyncio.Event()
        #: Why the tail stopped reading (its followers raise it).
        self.error: Exception | None = None
        self.followers = 0
        #: Events and payload bytes kept.
        self.size = 0
        self.bytes = 0
        #: Pages read from storage.
        self.reads = 0
        self._slices: deque[_Slice] = deque()
        self._task: asyncio.Task[None] | None = None

    # -- for subscriptions -----------------------------------------------------------
    def slice_from(self, position: int) -> _Slice:
        """The events from ``position`` (start <= position < end) to the end of the
        slice that holds it."""
        for piece in reversed(self._slices):
            if piece.start <= position:
                index = bisect.bisect_left(piece.events, position, key=_offset)
                events = piece.events[index:]
                return _Slice(position, piece.end, events, sum(e.size for e in events))
        raise AssertionError(f"offset {position} is not in the tail [{self.start}, {self.end})")

    def wake_followers(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    # -- the reading task ------------------------------------------------------------
    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read(), name=f"tail:{self.stream_name}")

    def stop_reading(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _read(self) -> None:
        signals = self.store.signals
        try:
            while True:
                with signals.watch(self.stream_name) as waiter:
                    self.reads += 1
                    result = await self.store.read_stream(self.stream_name, self.end, PAGE_SIZE)
                    if result.next_offset > self.end:
                        size = sum(e.size for e in result.events)
                        self._add(_Slice(self.end, result.next_offset, result.events, size))
                    if result.end_of_stream:
                        await StreamSignals.wait(waiter)
        except Exception as exc:
            # The stream was deleted, or storage failed: the followers end with it.
            self.error = exc
            self.wake_followers()

    def _add(self, piece: _Slice) -> None:
        self._slices.append(piece)
        self.size += len(piece.events)
        self.bytes += piece.size
        self.end = piece.end
        while (self.size > self.max_events or self.bytes > self.max_bytes) and len(
            self._slices
        ) > 1:
            dropped = self._slices.popleft()
            self.size -= len(dropped.events)
            self.bytes -= dropped.size
            self.start = self._slices[0].start
        self.wake_followers()


class Subscriptions:
    """Every subscription of one server: the stream tails they follow and the
    subscriptions in progress (for observation and tests). ``close()`` ends them
    all, now and from then on (at shutdown)."""

    def __init__(
        self,
        store: EventStore,
        *,
        page_size: int = PAGE_SIZE,
        tail_events: int = TAIL_EVENTS,
        tail_bytes: int = TAIL_BYTES,
    ) -> None:
        self.store = store
        self.page_size = page_size
        self.tail_events = tail_events
        self.tail_bytes = tail_bytes
        self.tails: dict[str, StreamTail] = {}
        self.active: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self.closed = False

    async def follow(self, args: SubscribeArgs) -> AsyncIterator[SubscriptionItem]:
        """The items of a SubscribeToStream call: history from its start, one
        CaughtUp, then live events."""
        start = await self._start_offset(args)
        subscription = Subscription(self, args.stream_name, start, args.read_filter)
        async for item in subscription.items():
            yield item

    async def _start_offset(self, args: SubscribeArgs) -> int:
        if args.from_offset is not None:
            return args.from_offset
        if args.from_end:
            return await self.store.get_stream_length(args.stream_name)
        assert args.consumer_group is not None
        try:
            return await self.store.get_consumer_offset(args.stream_name, args.consumer_group) + 1
        except ConsumerOffsetNotFound:
            return 0

    def close(self) -> None:
        self.closed = True
        self.store.signals.notify_all()
        for tail in list(self.tails.values()):
            tail.wake_followers()

    def check_open(self) -> None:
        if self.closed:
            raise ServerShuttingDown

    def _follow_tail(self, stream_name: str, position: int) -> StreamTail:
        tail = self.tails.get(stream_name)
        if tail is None or tail.error is not None:
            tail = self.tails[stream_name] = StreamTail(
                self.store, stream_name, position, self.tail_events, self.tail_bytes
            )
            tail.start_reading()
        tail.followers += 1
        return tail

    def _unfollow_tail(self, tail: StreamTail) -> None:
        tail.followers -= 1
        if tail.followers > 0:
            return
        tail.stop_reading()
        if self.tails.get(tail.stream_name) is tail:
            del self.tails[tail.stream_name]


class Subscription:
    """One subscriber's walk along a persistent stream."""

    def __init__(
        self,
        owner: Subscriptions,
        stream_name: str,
        start: int,
        read_filter: ReadFilter = NO_FILTER,
    ) -> None:
        self.owner = owner
        self.store = owner.store
        self.stream_name = stream_name
        self.read_filter = read_filter
        #: The offset of the next event wanted.
        self.position = start
        self.caught_up = False
        #: Events (and their payload bytes) taken from storage or the tail and not
        #: yet handed on, and the most ever held at once.
        self.held = 0
        self.peak_held = 0
        self.held_bytes = 0
        self.peak_held_bytes = 0
        #: Pages read from storage by this subscription itself (history, or after
        #: falling behind the tail).
        self.storage_reads = 0

    async def items(self) -> AsyncIterator[SubscriptionItem]:
        """Events in offset order, with one CaughtUp after the history.

        Raises what the store raises (StreamNotFound once the stream is deleted,
        WrongStreamType for a queue, StorageUnavailable on an outage), and
        ServerShuttingDown.
        """
        self.owner.active.add(self)
        tail: StreamTail | None = None
        try:
            end_of_stream = False
            while not end_of_stream:
                self.owner.check_open()
                result = await self._read_storage()
                for event in self._hand_on(result):
                    yield event
                end_of_stream = result.end_of_stream
            self.caught_up = True
            yield CaughtUp(self.position)

            tail = self.owner._follow_tail(self.stream_name, self.position)
            while True:
                self.owner.check_open()
                changed = tail.changed
                if tail.error is not None:
                    raise tail.error
                if self.position < tail.start:
                    # Behind what the tail keeps (fallen behind, or the tail began
                    # ahead of the stream's end): storage serves it, as before CaughtUp.
                    with self.store.signals.watch(self.stream_name) as waiter:
                        result = await self._read_storage()
                        for event in self._hand_on(result):
                            yield event
                        if result.end_of_stream and self.position < tail.start:
                            await StreamSignals.wait(waiter)
                elif self.position < tail.end:
                    piece = tail.slice_from(self.position)
                    for event in self._hold(piece.events, piece.size, filtered=True):
                        yield event
                    self.position = max(self.position, piece.end)
                else:
                    await StreamSignals.wait(changed)
        finally:
            self.held = self.held_bytes = 0
            if tail is not None:
                self.owner._unfollow_tail(tail)
            self.owner.active.discard(self)

    async def _read_storage(self) -> ReadResult:
        """A page from storage at the position, filtered there."""
        self.storage_reads += 1
        return await self.store.read_stream(
            self.stream_name, self.position, self.owner.page_size, self.read_filter
        )

    def _hand_on(self, result: ReadResult) -> Iterator[RecordedEvent]:
        """The events of a page read from storage, then the position after it."""
        size = sum(e.size for e in result.events)
        yield from self._hold(result.events, size, filtered=False)
        self.position = max(self.position, result.next_offset)

    def _hold(
        self, events: tuple[RecordedEvent, ...], size: int, *, filtered: bool
    ) -> Iterator[RecordedEvent]:
        """The events to send, keeping count of those held meanwhile."""
        self.held, self.held_bytes = len(events), size
        self.peak_held = max(self.peak_held, self.held)
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        for event in events:
            self.held -= 1
            self.held_bytes -= event.size
            if not filtered or self.read_filter.matches(event):
                yield event

"""Live subscriptions: history from storage, then one CaughtUp, then live events.

A subscription keeps no queue of its own. It reads its history from storage a page
at a time and hands the events on one by one; the gRPC write applies flow control,
so a slow client simply pauses it. Once a read reaches the end of the stream it
sends CaughtUp and follows the stream's :class:`StreamTail`: the live end of the
stream, read from storage *once per process* for all its subscribers (a hundred
subscribers of one stream cost one read per write, not a hundred). The tail reads
when the stream's wake-up fires: a write in this process, or another replica's
notification (storage.postgres.notifier).

- Order, no gaps, no duplicates: every event comes from storage in offset order, the
  tail covers a contiguous range of offsets, and a subscription's position only moves
  to the end of what it was handed.
- No write is missed between "nothing more" and "wait": the wake-up event is taken
  *before* each look (see :mod:`storage.signals`).
- Bounded memory: a tail keeps the last ``TAIL_CAPACITY`` events or so; a
  subscription holds one page or one slice of the tail. A subscriber that falls
  behind the tail is served from storage again, a page at a time, until it is back.
- Cancellation (client gone, server stopping) releases everything: the last
  subscription of a stream stops its tail.

A timed re-read (``REPOLL_SECONDS``) is the safety net should a wake-up be lost.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from storage.interface import EventStore
from storage.records import NO_FILTER, ReadFilter, ReadResult, RecordedEvent
from storage.signals import StreamSignals

#: Events read from storage per round trip.
PAGE_SIZE = 500
#: Events a stream's tail keeps for subscribers that are a little behind.
TAIL_CAPACITY = 1000
#: Re-read this often even without a wake-up.
REPOLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """History has been delivered; ``next_offset`` is where live delivery starts."""

    next_offset: int


SubscriptionItem = RecordedEvent | CaughtUp

#: Every subscription in progress in this process (for observation and tests).
active_subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
#: The tails being followed, per store and stream.
_tails: weakref.WeakKeyDictionary[EventStore, dict[str, StreamTail]] = weakref.WeakKeyDictionary()
#: Stores whose server is shutting down: their subscriptions end.
_ending: weakref.WeakSet[EventStore] = weakref.WeakSet()


class ServerShuttingDown(Exception):
    """The server is stopping; the client should subscribe again (elsewhere)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; subscribe again to continue")


def end_subscriptions(store: EventStore) -> None:
    """End every subscription on ``store``, now and from now on (at shutdown)."""
    _ending.add(store)
    store.signals.notify_all()
    for tail in list(_tails.get(store, {}).values()):
        tail.wake_followers()


def tails_of(store: EventStore) -> dict[str, StreamTail]:
    """The tails currently followed on ``store`` (for observation and tests)."""
    return dict(_tails.get(store, {}))


@dataclass(frozen=True, slots=True)
class _Slice:
    """Events of a stream read together: every retained event with an offset in
    ``[start, end)``, in offset order."""

    start: int
    end: int
    events: tuple[RecordedEvent, ...]


class StreamTail:
    """The live end of one stream in this process, shared by its subscriptions.

    One task reads from storage whatever was appended since its last read, whenever
    the stream's wake-up fires, and keeps the newest slices (about TAIL_CAPACITY
    events) covering ``[start, end)`` without a gap.
    """

    def __init__(self, store: EventStore, stream_name: str, start: int) -> None:
        self.store = store
        self.stream_name = stream_name
        self.start = start
        self.end = start
        #: Set (and replaced) whenever ``end`` moves or the tail fails.
        self.changed = asyncio.Event()
        #: Why the tail stopped reading (its followers raise it).
        self.error: Exception | None = None
        self.followers = 0
        self.size = 0
        self._slices: deque[_Slice] = deque()
        self._task: asyncio.Task[None] | None = None

    # -- for subscriptions -----------------------------------------------------------
    def slice_from(self, position: int) -> _Slice:
        """The events from ``position`` (start <= position < end) to the end of the
        slice that holds it."""
        for piece in reversed(self._slices):
            if piece.start <= position:
                index = bisect.bisect_left(piece.events, position, key=_offset)
                return _Slice(position, piece.end, piece.events[index:])
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
                waiter = signals.waiter(self.stream_name)
                result = await self.store.read_stream(self.stream_name, self.end, PAGE_SIZE)
                if result.next_offset > self.end:
                    self._add(_Slice(self.end, result.next_offset, result.events))
                if not result.end_of_stream:
                    continue
                await StreamSignals.wait(waiter, REPOLL_SECONDS)
        except Exception as exc:
            # The stream was deleted, or storage failed: the followers end with it.
            self.error = exc
            self.wake_followers()

    def _add(self, piece: _Slice) -> None:
        self._slices.append(piece)
        self.size += len(piece.events)
        self.end = piece.end
        while self.size > TAIL_CAPACITY and len(self._slices) > 1:
            self.size -= len(self._slices.popleft().events)
            self.start = self._slices[0].start
        self.wake_followers()


def _offset(event: RecordedEvent) -> int:
    return event.offset


def _follow(store: EventStore, stream_name: str, position: int) -> StreamTail:
    tails = _tails.setdefault(store, {})
    tail = tails.get(stream_name)
    if tail is None or tail.error is not None:
        tail = tails[stream_name] = StreamTail(store, stream_name, position)
        tail.start_reading()
    tail.followers += 1
    return tail


def _unfollow(tail: StreamTail) -> None:
    tail.followers -= 1
    if tail.followers > 0:
        return
    tail.stop_reading()
    tails = _tails.get(tail.store, {})
    if tails.get(tail.stream_name) is tail:
        del tails[tail.stream_name]


class Subscription:
    """One subscriber's walk along a persistent stream."""

    def __init__(
        self,
        store: EventStore,
        stream_name: str,
        start: int,
        read_filter: ReadFilter = NO_FILTER,
        *,
        page_size: int = PAGE_SIZE,
        repoll_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.stream_name = stream_name
        self.read_filter = read_filter
        self.page_size = page_size
        self.repoll_seconds = REPOLL_SECONDS if repoll_seconds is None else repoll_seconds
        #: The offset of the next event wanted.
        self.position = start
        self.caught_up = False
        #: Events taken from storage or the tail and not yet handed on, and the most
        #: ever held at once.
        self.held = 0
        self.peak_held = 0
        #: Pages read from storage by this subscription itself (history, or after
        #: falling behind the tail).
        self.storage_reads = 0

    async def items(self) -> AsyncIterator[SubscriptionItem]:
        """Events in offset order, with one CaughtUp after the history.

        Raises what the store raises (StreamNotFound once the stream is deleted,
        WrongStreamType for a queue, StorageUnavailable on an outage), and
        ServerShuttingDown.
        """
        active_subscriptions.add(self)
        tail: StreamTail | None = None
        try:
            end_of_stream = False
            while not end_of_stream:
                self._check_ending()
                result = await self._read_storage()
                for event in self._hand_on(result.events, filtered=False):
                    yield event
                self.position = max(self.position, result.next_offset)
                end_of_stream = result.end_of_stream
            self.caught_up = True
            yield CaughtUp(self.position)

            tail = _follow(self.store, self.stream_name, self.position)
            while True:
                self._check_ending()
                changed = tail.changed
                if tail.error is not None:
                    raise tail.error
                if self.position < tail.start:
                    # Behind what the tail keeps (fallen behind, or the tail began
                    # ahead of the stream's end): storage serves it, as before CaughtUp.
                    waiter = self.store.signals.waiter(self.stream_name)
                    result = await self._read_storage()
                    for event in self._hand_on(result.events, filtered=False):
                        yield event
                    self.position = max(self.position, result.next_offset)
                    if result.end_of_stream and self.position < tail.start:
                        await StreamSignals.wait(waiter, self.repoll_seconds)
                elif self.position < tail.end:
                    piece = tail.slice_from(self.position)
                    for event in self._hand_on(piece.events, filtered=True):
                        yield event
                    self.position = max(self.position, piece.end)
                else:
                    await StreamSignals.wait(changed, self.repoll_seconds)
        finally:
            self.held = 0
            if tail is not None:
                _unfollow(tail)
            active_subscriptions.discard(self)

    async def _read_storage(self) -> ReadResult:
        """A page from storage at the position, filtered there."""
        self.storage_reads += 1
        return await self.store.read_stream(
            self.stream_name, self.position, self.page_size, self.read_filter
        )

    def _hand_on(
        self, events: tuple[RecordedEvent, ...], *, filtered: bool
    ) -> Iterator[RecordedEvent]:
        """The events to send, keeping count of those held meanwhile."""
        self.held = len(events)
        self.peak_held = max(self.peak_held, self.held)
        for event in events:
            self.held -= 1
            if not filtered or self.read_filter.matches(event):
                yield event

    def _check_ending(self) -> None:
        if self.store in _ending:
            raise ServerShuttingDown

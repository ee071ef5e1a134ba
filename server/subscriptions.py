"""Live subscriptions: history from storage, then one CaughtUp, then live events;
over one stream (SubscribeToStream) or over the global log (SubscribeToAll).

A subscription keeps no queue of its own. It reads its history from storage a page
at a time and hands the events on one by one; the gRPC write applies flow control,
so a client that does not read simply pauses it (it holds one page, which storage
bounds in bytes, and fetches nothing more until the client drains it). Once a read
reaches the end it sends CaughtUp and follows the :class:`Tail` of what it walks
along: the live end of a stream, or of the global log, read from storage *once
per process* for all its subscribers (a hundred subscribers cost one read per
write, not a hundred). A tail reads when its wake-up fires: a write in this
process, or another replica's notification (storage.postgres.notifier).

- Order, no gaps, no duplicates: every event comes from storage in order (offsets,
  or global positions, which are gap-safe), a tail covers a contiguous range, and a
  subscription's position only moves to the end of what it was handed.
- No write is missed between "nothing more" and "wait": the wake-up event is taken
  *before* each look (see :mod:`storage.signals`).
- Bounded memory: a tail keeps the newest events up to ``tail_events`` and
  ``tail_bytes``; a subscription holds one page or one slice of the tail. A
  subscriber that falls behind the tail is served from storage again, a page at a
  time, until it is back.
- Idle costs nothing: no timers and no re-reads while nothing is written (a lost
  cross-replica notification is the storage backend's to recover, with one query
  for every waited stream; see storage.signals).
- Sparse filters on the global log: an :class:`AllCheckpoint` at least every
  ``checkpoint_interval`` positions scanned without a match, never beyond the last
  position scanned, so a consumer can save its progress and lose nothing.
- Cancellation (client gone, server stopping) releases everything: the last
  subscription of a tail stops it.

One :class:`Subscriptions` per server owns the tails and the subscriptions in
progress; it is made when the server starts and closed when it stops.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from server.errors import ServerShuttingDown
from server.validation import SubscribeAllArgs, SubscribeArgs
from storage.errors import ConsumerOffsetNotFound
from storage.interface import EventStore
from storage.records import (
    ALL_STREAM,
    NO_ALL_FILTER,
    NO_FILTER,
    AllFilter,
    ReadFilter,
    RecordedEvent,
)
from storage.signals import StreamSignals

#: Events read from storage per round trip (storage also bounds a page in bytes).
PAGE_SIZE = 500
#: Events a tail keeps for subscribers that are a little behind.
TAIL_EVENTS = 1000
#: ... and the most bytes of payload it keeps (at least its newest slice).
TAIL_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """History has been delivered; ``position`` is where live delivery starts (an
    offset for a stream, a global position for the global log)."""

    position: int


@dataclass(frozen=True, slots=True)
class AllCheckpoint:
    """Every position up to ``position`` has been scanned (a sparse filter's
    progress): resuming after it loses nothing."""

    position: int


SubscriptionItem = RecordedEvent | CaughtUp | AllCheckpoint


@dataclass(frozen=True, slots=True)
class Page:
    """Events read together: every one in ``[start, end)`` of the walk's order that
    the read let through, in order; ``at_end``: nothing after ``end`` yet."""

    start: int
    end: int
    events: tuple[RecordedEvent, ...]
    at_end: bool
    size: int = 0


class Source:
    """What a subscription walks along: a stream's offsets, or the global log's
    positions. ``signal`` names its wake-ups (and its tail)."""

    def __init__(self, store: EventStore, signal: str) -> None:
        self.store = store
        self.signal = signal

    async def read(self, position: int, count: int, *, filtered: bool) -> Page:
        raise NotImplementedError

    def position(self, event: RecordedEvent) -> int:
        raise NotImplementedError

    def matches(self, event: RecordedEvent) -> bool:
        raise NotImplementedError


class StreamSource(Source):
    def __init__(self, store: EventStore, stream_name: str, read_filter: ReadFilter) -> None:
        super().__init__(store, stream_name)
        self.read_filter = read_filter

    async def read(self, position: int, count: int, *, filtered: bool) -> Page:
        chosen = self.read_filter if filtered else NO_FILTER
        result = await self.store.read_stream(self.signal, position, count, chosen)
        return Page(position, result.next_offset, result.events, result.end_of_stream)

    def position(self, event: RecordedEvent) -> int:
        return event.offset

    def matches(self, event: RecordedEvent) -> bool:
        return self.read_filter.matches(event)


class AllSource(Source):
    def __init__(self, store: EventStore, read_filter: AllFilter) -> None:
        super().__init__(store, ALL_STREAM)
        self.read_filter = read_filter

    async def read(self, position: int, count: int, *, filtered: bool) -> Page:
        chosen = self.read_filter if filtered else NO_ALL_FILTER
        result = await self.store.read_all(position, count, chosen)
        return Page(position, result.next_position, result.events, result.end_of_log)

    def position(self, event: RecordedEvent) -> int:
        return event.global_position

    def matches(self, event: RecordedEvent) -> bool:
        return self.read_filter.matches(event)


def _sized(page: Page) -> Page:
    return Page(page.start, page.end, page.events, page.at_end, sum(e.size for e in page.events))


class Tail:
    """The live end of a stream (or of the global log) in this process, shared by
    its subscriptions.

    One task reads from storage whatever was appended since its last read, whenever
    the wake-up fires, and keeps the newest pages (about ``max_events`` events and
    ``max_bytes`` of payload) covering ``[start, end)`` without a gap.
    """

    def __init__(self, source: Source, start: int, max_events: int, max_bytes: int) -> None:
        self.source = source
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
        self._pages: deque[Page] = deque()
        self._task: asyncio.Task[None] | None = None

    # -- for subscriptions -----------------------------------------------------------
    def page_from(self, position: int) -> Page:
        """The events from ``position`` (start <= position < end) to the end of the
        page that holds it."""
        for page in reversed(self._pages):
            if page.start <= position:
                index = bisect.bisect_left(page.events, position, key=self.source.position)
                return _sized(Page(position, page.end, page.events[index:], page.at_end))
        raise AssertionError(f"{position} is not in the tail [{self.start}, {self.end})")

    def wake_followers(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    # -- the reading task ------------------------------------------------------------
    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read(), name=f"tail:{self.source.signal}")

    def stop_reading(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _read(self) -> None:
        signals = self.source.store.signals
        try:
            while True:
                with signals.watch(self.source.signal) as waiter:
                    self.reads += 1
                    page = await self.source.read(self.end, PAGE_SIZE, filtered=False)
                    if page.end > self.end:
                        self._add(_sized(page))
                    if page.at_end:
                        await StreamSignals.wait(waiter)
        except Exception as exc:
            # The stream was deleted, or storage failed: the followers end with it.
            self.error = exc
            self.wake_followers()

    def _add(self, page: Page) -> None:
        self._pages.append(page)
        self.size += len(page.events)
        self.bytes += page.size
        self.end = page.end
        while (self.size > self.max_events or self.bytes > self.max_bytes) and len(self._pages) > 1:
            dropped = self._pages.popleft()
            self.size -= len(dropped.events)
            self.bytes -= dropped.size
            self.start = self._pages[0].start
        self.wake_followers()


class Subscriptions:
    """Every subscription of one server: the tails they follow and the
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
        self.tails: dict[str, Tail] = {}
        self.active: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self.closed = False

    async def follow(self, args: SubscribeArgs) -> AsyncIterator[SubscriptionItem]:
        """The items of a SubscribeToStream call: history from its start, one
        CaughtUp, then live events."""
        source = StreamSource(self.store, args.stream_name, args.read_filter)
        if args.from_offset is not None:
            start = args.from_offset
        elif args.from_end:
            start = await self.store.get_stream_length(args.stream_name)
        else:
            assert args.consumer_group is not None
            start = await self._after_group(args.stream_name, args.consumer_group, first=0)
        async for item in Subscription(self, source, start).items():
            yield item

    async def follow_all(self, args: SubscribeAllArgs) -> AsyncIterator[SubscriptionItem]:
        """The items of a SubscribeToAll call: history from its start, one CaughtUp,
        then live events, with checkpoints for a filter that rarely matches."""
        source = AllSource(self.store, args.read_filter)
        if args.from_position is not None:
            start = args.from_position
        elif args.from_end:
            newest = await self.store.read_all(0, 1, backward=True)
            start = newest.events[0].global_position + 1 if newest.events else 1
        else:
            assert args.consumer_group is not None
            start = await self._after_group(ALL_STREAM, args.consumer_group, first=1)
        interval = None if args.read_filter.is_empty else args.checkpoint_interval
        async for item in Subscription(self, source, start, interval).items():
            yield item

    async def _after_group(self, stream_name: str, group: str, *, first: int) -> int:
        """Right after the group's committed offset (``first`` when it never committed)."""
        try:
            return await self.store.get_consumer_offset(stream_name, group) + 1
        except ConsumerOffsetNotFound:
            return first

    def close(self) -> None:
        self.closed = True
        self.store.signals.notify_all()
        for tail in list(self.tails.values()):
            tail.wake_followers()

    def check_open(self) -> None:
        if self.closed:
            raise ServerShuttingDown

    def _follow_tail(self, source: Source, position: int) -> Tail:
        tail = self.tails.get(source.signal)
        if tail is None or tail.error is not None:
            tail = self.tails[source.signal] = Tail(
                source, position, self.tail_events, self.tail_bytes
            )
            tail.start_reading()
        tail.followers += 1
        return tail

    def _unfollow_tail(self, tail: Tail) -> None:
        tail.followers -= 1
        if tail.followers > 0:
            return
        tail.stop_reading()
        if self.tails.get(tail.source.signal) is tail:
            del self.tails[tail.source.signal]


class Subscription:
    """One subscriber's walk along a stream or the global log."""

    def __init__(
        self,
        owner: Subscriptions,
        source: Source,
        start: int,
        checkpoint_interval: int | None = None,
    ) -> None:
        self.owner = owner
        self.source = source
        #: The stream's name, or ALL_STREAM.
        self.stream_name = source.signal
        #: The offset (or position) of the next event wanted.
        self.position = start
        self.caught_up = False
        #: Checkpoints: at least this often (positions scanned without a match).
        self.checkpoint_interval = checkpoint_interval
        #: The last position handed on as an event or checkpoint.
        self.reported = start - 1
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
        """Events in order, with one CaughtUp after the history, and checkpoints.

        Raises what the store raises (StreamNotFound once the stream is deleted,
        WrongStreamType for a queue, StorageUnavailable on an outage), and
        ServerShuttingDown.
        """
        owner, signals = self.owner, self.source.store.signals
        owner.active.add(self)
        tail: Tail | None = None
        try:
            at_end = False
            while not at_end:
                owner.check_open()
                page = await self._read_storage()
                for item in self._hand_on(page, filtered=False):
                    yield item
                at_end = page.at_end
            self.caught_up = True
            yield CaughtUp(self.position)

            tail = owner._follow_tail(self.source, self.position)
            while True:
                owner.check_open()
                changed = tail.changed
                if tail.error is not None:
                    raise tail.error
                if self.position < tail.start:
                    # Behind what the tail keeps (fallen behind, or the tail began
                    # ahead of the end): storage serves it, as before CaughtUp.
                    with signals.watch(self.source.signal) as waiter:
                        page = await self._read_storage()
                        for item in self._hand_on(page, filtered=False):
                            yield item
                        if page.at_end and self.position < tail.start:
                            await StreamSignals.wait(waiter)
                elif self.position < tail.end:
                    for item in self._hand_on(tail.page_from(self.position), filtered=True):
                        yield item
                else:
                    await StreamSignals.wait(changed)
        finally:
            self.held = self.held_bytes = 0
            if tail is not None:
                owner._unfollow_tail(tail)
            owner.active.discard(self)

    async def _read_storage(self) -> Page:
        """A page from storage at the position, filtered there."""
        self.storage_reads += 1
        page = await self.source.read(self.position, self.owner.page_size, filtered=True)
        return _sized(page)

    def _hand_on(self, page: Page, *, filtered: bool) -> Iterator[SubscriptionItem]:
        """The page's events to send (filtered here when storage did not), keeping
        count of those held meanwhile; then a checkpoint when one is due, and the
        position after the page."""
        self.held, self.held_bytes = len(page.events), page.size
        self.peak_held = max(self.peak_held, self.held)
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        position: Callable[[RecordedEvent], int] = self.source.position
        for event in page.events:
            self.held -= 1
            self.held_bytes -= event.size
            if not filtered or self.source.matches(event):
                self.reported = position(event)
                yield event
        self.position = max(self.position, page.end)
        scanned = self.position - 1
        interval = self.checkpoint_interval
        if interval is not None and scanned - self.reported >= interval:
            self.reported = scanned
            yield AllCheckpoint(scanned)

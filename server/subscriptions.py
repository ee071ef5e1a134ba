"""Live subscriptions: history from storage, then one CaughtUp, then live events.

A subscription never keeps a queue of its own. It reads a page from storage at its
position, hands the events on one by one (the gRPC write applies flow control, so
a slow client simply pauses it), and when storage has nothing more it waits for the
stream's wake-up (a local write, or another replica's notification) and reads
again from where it stopped. So:

- order, no gaps, no duplicates: everything comes from storage in offset order, and
  the position only ever moves to the ``next_offset`` storage reported;
- no write is missed between "read returned the end" and "wait": the wake-up event
  is taken *before* each read (see :mod:`storage.signals`);
- bounded memory: at most one page per subscriber, however far behind it is; a
  subscriber that falls behind is simply served from storage again;
- cancellation (client gone, server stopping) leaves nothing behind: the only
  resources are the page in hand and a wake-up event shared with other waiters.

A timed re-read (``repoll_seconds``) is the safety net should a wake-up be lost.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from storage.interface import EventStore
from storage.records import NO_FILTER, ReadFilter, RecordedEvent
from storage.signals import StreamSignals

#: Events read from storage per round trip.
PAGE_SIZE = 500
#: Re-read this often even without a wake-up.
REPOLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """History has been delivered; ``next_offset`` is where live delivery starts."""

    next_offset: int


SubscriptionItem = RecordedEvent | CaughtUp

#: Every subscription in progress in this process (for observation and tests).
active_subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
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
        #: The offset the next read starts at.
        self.position = start
        self.caught_up = False
        #: Events read from storage and not yet handed on, and the most ever held.
        self.held = 0
        self.peak_held = 0

    async def items(self) -> AsyncIterator[SubscriptionItem]:
        """Events in offset order, with one CaughtUp after the history.

        Raises what the store raises (StreamNotFound once the stream is deleted,
        WrongStreamType for a queue, StorageUnavailable on an outage).
        """
        active_subscriptions.add(self)
        try:
            while True:
                if self.store in _ending:
                    raise ServerShuttingDown
                waiter = self.store.signals.waiter(self.stream_name)
                result = await self.store.read_stream(
                    self.stream_name, self.position, self.page_size, self.read_filter
                )
                self.held = len(result.events)
                self.peak_held = max(self.peak_held, self.held)
                for event in result.events:
                    self.held -= 1
                    yield event
                self.position = max(self.position, result.next_offset)
                if not result.end_of_stream:
                    continue
                if not self.caught_up:
                    self.caught_up = True
                    yield CaughtUp(self.position)
                await StreamSignals.wait(waiter, self.repoll_seconds)
        finally:
            self.held = 0
            active_subscriptions.discard(self)

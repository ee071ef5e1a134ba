"""In-process wake-ups for code waiting on a stream to change.

A waiter takes the stream's current :class:`asyncio.Event` *before* it looks at the
store, then waits on it; a writer calls :meth:`StreamSignals.notify` after its
commit, which sets that event and starts a fresh one. Taking the event first means a
write that lands between the look and the wait is never missed.

Waiting costs nothing while nothing happens: no timer, no re-read. Wake-ups come
from writes in this process and, on a shared database, from the other processes'
notifications; a backend that can lose a notification checks the streams in
:meth:`StreamSignals.waited` now and then (one query for all of them) and notifies
those that changed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


class StreamSignals:
    """Per-stream wake-ups for long polls and live subscriptions."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        #: How many are watching each stream (see :meth:`watch`).
        self._watchers: collections.Counter[str] = collections.Counter()

    def waiter(self, stream_name: str) -> asyncio.Event:
        """The event the next write to ``stream_name`` will set."""
        event = self._events.get(stream_name)
        if event is None:
            event = self._events[stream_name] = asyncio.Event()
        return event

    @contextlib.contextmanager
    def watch(self, stream_name: str) -> Iterator[asyncio.Event]:
        """:meth:`waiter`, counted among the stream's watchers for the block, so that
        :meth:`waited` knows who waits, and nothing is kept once nobody does."""
        event = self.waiter(stream_name)
        self._watchers[stream_name] += 1
        try:
            yield event
        finally:
            self._watchers[stream_name] -= 1
            if self._watchers[stream_name] <= 0:
                del self._watchers[stream_name]
                if self._events.get(stream_name) is event:
                    del self._events[stream_name]

    def waited(self) -> list[str]:
        """The streams someone is watching now."""
        return list(self._watchers)

    def notify(self, stream_name: str) -> None:
        """Wake everyone waiting on ``stream_name``."""
        event = self._events.pop(stream_name, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every waiter (at shutdown, or after a lost notification channel)."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float | None = None) -> bool:
        """Wait for the event, up to ``timeout`` seconds (None: no limit); True when
        it was set."""
        if event.is_set():
            return True
        if timeout is None:
            await event.wait()
            return True
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Look(Generic[T]):
    """What one look at a stream found, for :func:`wait_for_items`."""

    found: Sequence[T] = ()
    #: Seconds until something may become visible with no write (a lease or a
    #: delay running out); None when nothing is due.
    next_visible: float | None = None
    #: Look again at once: the look made progress but found nothing yet.
    again: bool = False


async def wait_for_items(
    signals: StreamSignals,
    stream_name: str,
    wait_time: timedelta,
    look: Callable[[], Awaitable[Look[T]]],
) -> Sequence[T]:
    """Long polling: ``look()`` until it finds something or ``wait_time`` is up,
    sleeping between looks until a write to the stream or the next item due,
    whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_time.total_seconds()
    while True:
        # Taken before the look, so a write committed after it wakes us.
        with signals.watch(stream_name) as waiter:
            result = await look()
            if result.found:
                return result.found
            if result.again:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ()
            timeout = remaining
            if result.next_visible is not None:
                timeout = min(timeout, result.next_visible)
            await StreamSignals.wait(waiter, timeout)

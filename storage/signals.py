"""In-process wake-ups for code waiting on a stream to change.

A waiter takes the stream's current :class:`asyncio.Event` *before* it looks at the
store, then waits on it; a writer calls :meth:`StreamSignals.notify` after its
commit, which sets that event and starts a fresh one. Taking the event first means a
write that lands between the look and the wait is never missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


class StreamSignals:
    """Per-stream wake-ups for long polls and live subscriptions."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, stream_name: str) -> asyncio.Event:
        """The event the next write to ``stream_name`` will set."""
        event = self._events.get(stream_name)
        if event is None:
            event = self._events[stream_name] = asyncio.Event()
        return event

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
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when the event was set."""
        if event.is_set():
            return True
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), timeout)
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
    *,
    repoll: float | None = None,
) -> Sequence[T]:
    """Long polling: ``look()`` until it finds something or ``wait_time`` is up,
    sleeping between looks until a write to the stream, the next item due, or
    ``repoll`` seconds (for writes no signal reports), whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_time.total_seconds()
    while True:
        # Taken before the look, so a write committed after it wakes us.
        waiter = signals.waiter(stream_name)
        result = await look()
        if result.found:
            return result.found
        if result.again:
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            return ()
        timeout = remaining if repoll is None else min(remaining, repoll)
        if result.next_visible is not None:
            timeout = min(timeout, result.next_visible)
        await StreamSignals.wait(waiter, timeout)

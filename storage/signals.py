"""In-process wake-ups for code waiting on a stream to change.

A waiter takes the stream's current :class:`asyncio.Event` *before* it looks at the
store, then waits on it; a writer calls :meth:`StreamSignals.notify` after its
commit, which sets that event and starts a fresh one. Taking the event first means a
write that lands between the look and the wait is never missed.
"""

from __future__ import annotations

import asyncio


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

"""The request side of a blocking bidirectional call: gRPC reads the requests
from an iterator in a thread of its own, and this one yields what is put into it."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

_END = object()


class RequestPipe:
    """Requests put here are sent in order; ``close()`` half-closes the call once
    those before it are sent."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, request: Any) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

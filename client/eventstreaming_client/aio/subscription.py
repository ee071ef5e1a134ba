"""A subscription (asyncio) that survives disconnects and server restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client._resume import ResumePoint, SubscriptionStart, should_reconnect
from eventstreaming_client.errors import handle_rpc_error
from eventstreaming_client.models import RecordedEvent
from eventstreaming_client.options import RetryPolicy

if TYPE_CHECKING:
    from eventstreaming_client.aio.client import AsyncClient


class AsyncSubscription:
    """An async iterator of :class:`~eventstreaming_client.models.RecordedEvent`.

    Use it as ``async with client.subscribe(...) as sub: async for event in sub``,
    or call :meth:`close`. ``caught_up`` turns true once history was delivered;
    ``last_position`` is the offset (global position for ``$all``) of the last event
    handed out; ``reconnects`` counts the calls made again after a failure.
    """

    def __init__(
        self,
        client: AsyncClient,
        method: Callable[..., Any],
        start: SubscriptionStart,
        *,
        metadata: tuple[tuple[str, str], ...],
        retry: RetryPolicy,
        until_caught_up: bool,
        reconnect: bool,
    ) -> None:
        self._client = client
        self._method = method
        self._metadata = metadata
        self._retry = retry
        self._until_caught_up = until_caught_up
        self._reconnect = reconnect
        self._point = ResumePoint(start)
        self._call: Any = None
        self._closed = False
        self._failures = 0
        self.reconnects = 0

    @property
    def stream_name(self) -> str:
        return self._point.start.stream_name

    @property
    def caught_up(self) -> bool:
        return self._point.caught_up

    @property
    def last_position(self) -> int | None:
        return self._point.last

    def position_of(self, event: RecordedEvent) -> int:
        """The offset (on ``$all``: the global position) a commit records for it."""
        return self._point.position_of(event)

    async def commit(self, event: RecordedEvent | None = None) -> None:
        """Commit the consumer group's offset at ``event`` (default: the last event
        handed out)."""
        group = self._point.start.consumer_group
        if group is None:
            raise ValueError("commit needs a subscription made with consumer_group=")
        position = self._point.last if event is None else self.position_of(event)
        if position is None:
            return
        await self._client.commit_offset(self.stream_name, group, position)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecordedEvent:
        while not self._closed:
            if self._call is None:
                self._call = self._method(self._point.request(), metadata=self._metadata)
            try:
                response = await self._call.read()
            except grpc.RpcError as exc:
                if self._closed:
                    break
                error = handle_rpc_error(exc)
                if not (self._reconnect and should_reconnect(error)):
                    self._call = None
                    raise error from None
                await self._pause_before_reconnect()
                continue
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                # The server ended the call without an error: treat as a disconnect.
                await self._pause_before_reconnect()
                continue
            kind = response.WhichOneof("content")
            if kind == "event":
                event = _convert.recorded_event(response.event)
                self._failures = 0
                if self._point.accept(event):
                    return event
            elif kind == "caught_up":
                self._point.on_caught_up(response.caught_up)
                if self._until_caught_up:
                    break
            elif kind == "checkpoint":
                self._point.on_checkpoint(response.checkpoint.position)
        await self.close()
        raise StopAsyncIteration

    async def _pause_before_reconnect(self) -> None:
        self._cancel_call()
        delay = self._retry.backoff(min(self._failures, 30))
        self._failures += 1
        self.reconnects += 1
        await asyncio.sleep(delay)

    def _cancel_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def close(self) -> None:
        """End the subscription (the server call is cancelled)."""
        self._closed = True
        self._cancel_call()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

"""A queue worker (asyncio): lease, run the handler with its lease kept alive,
acknowledge or nack, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Self

from eventstreaming_client._worker_common import (
    STOPPED_REASON,
    WorkerSettings,
    WorkerStats,
    failure_reason,
    log,
)
from eventstreaming_client.errors import EventStreamingError, MessageNotHeld, NotFound
from eventstreaming_client.models import QueueMessage

if TYPE_CHECKING:
    from eventstreaming_client.aio.client import AsyncClient

AsyncHandler = Callable[[QueueMessage], Awaitable[object]]


class AsyncWorker:
    """Runs ``handler`` on a queue's messages, ``concurrency`` at a time.

    Each message is leased for ``visibility_timeout``; while its handler runs, the
    lease is extended every ``heartbeat_interval`` (default: a third of it), so a
    slow handler keeps its message. A handler that returns gets its message
    acknowledged; one that raises gets it nacked, with the exception as the reason
    (and ``nack_delay``, else the queue's retry settings). :meth:`stop` stops
    leasing, lets running handlers finish for up to ``drain_timeout``, then cancels
    the rest and gives their messages back at once.

    ``async with client.consume(queue, handler, concurrency=4) as worker:`` starts
    it and stops it when the block ends; ``await worker.wait()`` waits until some
    other task calls ``stop()``.
    """

    def __init__(
        self,
        client: AsyncClient,
        stream_name: str,
        handler: AsyncHandler,
        *,
        concurrency: int,
        consumer_id: str | None,
        visibility_timeout: timedelta,
        heartbeat_interval: timedelta | None,
        poll_wait: timedelta,
        nack_delay: timedelta | None,
        drain_timeout: timedelta,
    ) -> None:
        self.settings = WorkerSettings.make(
            stream_name,
            concurrency=concurrency,
            consumer_id=consumer_id,
            visibility_timeout=visibility_timeout,
            heartbeat_interval=heartbeat_interval,
            poll_wait=poll_wait,
            nack_delay=nack_delay,
            drain_timeout=drain_timeout,
        )
        self.stats = WorkerStats()
        self._client = client
        self._handler = handler
        self._slots: list[asyncio.Task[None]] = []
        self._polls: set[asyncio.Task[list[QueueMessage]]] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def consumer_id(self) -> str:
        return self.settings.consumer_id

    @property
    def running(self) -> bool:
        return bool(self._slots) and not self._stopped.is_set()

    async def start(self) -> None:
        if self._slots:
            raise RuntimeError("the worker was started already")
        self._slots = [
            asyncio.create_task(self._slot(), name=f"worker-slot-{i}")
            for i in range(self.settings.concurrency)
        ]

    async def wait(self) -> None:
        """Until the worker has stopped."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop leasing; let running handlers finish (up to ``drain_timeout``), then
        cancel the rest and release their messages. Returns once all is settled."""
        self._stopping.set()
        for poll in list(self._polls):
            poll.cancel()
        if self._slots:
            _, pending = await asyncio.wait(
                self._slots, timeout=self.settings.drain_timeout.total_seconds()
            )
            if pending:
                for task in list(self._handlers):
                    task.cancel()
                await asyncio.wait(self._slots)
        self._stopped.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _slot(self) -> None:
        s = self.settings
        failures = 0
        while not self._stopping.is_set():
            poll = asyncio.create_task(
                self._client.dequeue(
                    s.stream_name,
                    s.consumer_id,
                    max_messages=1,
                    visibility_timeout=s.visibility_timeout,
                    wait_time=s.poll_wait,
                )
            )
            self._polls.add(poll)
            try:
                messages = await poll
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    return
                raise
            except EventStreamingError as exc:
                failures += 1
                log.warning("dequeue from %s failed: %s", s.stream_name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self._client.options.retry.backoff(failures)
                    )
                continue
            finally:
                self._polls.discard(poll)
            failures = 0
            for message in messages:
                await self._process(message)

    async def _process(self, message: QueueMessage) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(self._handler(message))
        self._handlers.add(task)
        heartbeat = asyncio.create_task(self._heartbeat(message))
        try:
            await asyncio.wait({task})
        finally:
            self._handlers.discard(task)
            heartbeat.cancel()
        if task.cancelled():
            await self._release(message)
        elif (error := task.exception()) is not None:
            await self._nack(message, error)
        else:
            await self._acknowledge(message)

    async def _heartbeat(self, message: QueueMessage) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.heartbeat_interval.total_seconds())
            try:
                await self._client.extend_visibility(
                    s.stream_name, s.consumer_id, message.event_id, s.visibility_timeout
                )
                self.stats.extensions += 1
            except (MessageNotHeld, NotFound):
                log.warning("lease on %s lost while its handler ran", message.event_id)
                return
            except EventStreamingError as exc:
                log.warning("extending the lease on %s failed: %s", message.event_id, exc)

    async def _acknowledge(self, message: QueueMessage) -> None:
        s = self.settings
        try:
            result = await self._client.acknowledge(
                s.stream_name, s.consumer_id, [message.event_id]
            )
        except EventStreamingError as exc:
            log.warning("acknowledging %s failed: %s", message.event_id, exc)
            return
        if result.failed:
            self.stats.lost_leases += 1
            log.warning(
                "%s was handled but not acknowledged (%s): its lease had ended",
                message.event_id,
                result.failed.get(message.event_id, "?"),
            )
        else:
            self.stats.acknowledged += 1

    async def _nack(self, message: QueueMessage, error: BaseException) -> None:
        s = self.settings
        log.info("handler failed on %s: %s", message.event_id, failure_reason(error))
        try:
            await self._client.nack(
                s.stream_name,
                s.consumer_id,
                message.event_id,
                delay=s.nack_delay,
                reason=failure_reason(error),
            )
            self.stats.nacked += 1
        except EventStreamingError as exc:
            log.warning("nacking %s failed: %s", message.event_id, exc)

    async def _release(self, message: QueueMessage) -> None:
        s = self.settings
        try:
            await self._client.nack(
                s.stream_name, s.consumer_id, message.event_id, reason=STOPPED_REASON
            )
            self.stats.released += 1
        except EventStreamingError as exc:
            log.warning("releasing %s failed: %s", message.event_id, exc)

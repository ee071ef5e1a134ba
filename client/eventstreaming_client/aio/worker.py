"""A queue worker (asyncio): lease, run the handler with its lease kept alive,
acknowledge or nack, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from eventstreaming_client import _convert
from eventstreaming_client._worker_common import (
    STOPPED_REASON,
    WorkerSettings,
    WorkerStats,
    failure_reason,
    log,
)
from eventstreaming_client.aio.consume import AsyncConsumeStream
from eventstreaming_client.errors import EventStreamingError, MessageNotHeld, NotFound
from eventstreaming_client.models import QueueMessage

if TYPE_CHECKING:
    from eventstreaming_client.aio.client import AsyncClient

AsyncHandler = Callable[[QueueMessage], Awaitable[object]]
T = TypeVar("T")


class AsyncWorker:
    """Runs ``handler`` on a queue's messages, ``concurrency`` at a time.

    The messages come over one ``Consume`` stream that holds at most
    ``concurrency`` of them: the server pushes the next one as soon as a handler's
    message is settled, and nothing polls. Each message is leased for
    ``visibility_timeout``; while its handler runs, the lease is extended every
    ``heartbeat_interval`` (default: a third of it), so a slow handler keeps its
    message. A handler that returns gets its message acknowledged; one that raises
    gets it nacked, with the exception as the reason (and ``nack_delay``, else the
    queue's retry settings). Acks, nacks and extends go on the stream and name the
    delivery (its receipt), so a late one never touches a later delivery.

    :meth:`stop` stops taking messages and lets running handlers finish for up to
    ``drain_timeout`` (settling their messages with the unary calls, so that the
    stream's window stays full and nothing more is pushed to it), then cancels
    the rest and gives their messages back at once (an explicit zero delay,
    whatever the queue's retry delay); closing the stream gives back at once any
    message that arrived meanwhile, unhandled. When the stream breaks (a restart,
    a lost connection), the worker opens another after a backoff; the messages in
    hand are settled with the unary calls, by receipt.

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
        self._runner: asyncio.Task[None] | None = None
        self._stream: AsyncConsumeStream | None = None
        #: One task per message being handled (its handler, then its ack or nack).
        self._jobs: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._free = asyncio.Semaphore(self.settings.concurrency)
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def consumer_id(self) -> str:
        return self.settings.consumer_id

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._stopped.is_set()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the worker was started already")
        self._runner = asyncio.create_task(self._run(), name="worker")

    async def wait(self) -> None:
        """Until the worker has stopped."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop taking messages; let running handlers finish (up to
        ``drain_timeout``), then cancel the rest and release their messages at
        once; close the stream. Returns once all is settled."""
        self._stopping.set()
        if self._runner is not None:
            if self._jobs:
                _, pending = await asyncio.wait(
                    self._jobs, timeout=self.settings.drain_timeout.total_seconds()
                )
                if pending:
                    for task in list(self._handlers):
                        task.cancel()
                    await asyncio.wait(pending)
            if self._stream is not None:
                await self._stream.close()
            await asyncio.wait({self._runner})
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

    # -- the stream ------------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.settings
        failures = 0
        while not self._stopping.is_set():
            stream = self._client.consume_stream(
                s.stream_name,
                consumer_id=s.consumer_id,
                max_outstanding=s.concurrency,
                visibility_timeout=s.visibility_timeout,
            )
            self._stream = stream
            try:
                async with stream:
                    async for message in stream:
                        failures = 0
                        await self._free.acquire()
                        if self._stopping.is_set():
                            # Taken as the worker stops: the stream's close gives it back.
                            self._free.release()
                            self.stats.released += 1
                            continue
                        job = asyncio.create_task(self._process(stream, message))
                        self._jobs.add(job)
                        job.add_done_callback(self._jobs.discard)
                self.stats.released += stream.unread
            except EventStreamingError as exc:
                if self._stopping.is_set():
                    return
                failures += 1
                log.warning("the Consume stream on %s ended: %s", s.stream_name, exc)
            if not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self._client.options.retry.backoff(failures)
                    )

    async def _process(self, stream: AsyncConsumeStream, message: QueueMessage) -> None:
        try:
            task: asyncio.Task[object] = asyncio.ensure_future(self._handler(message))
            self._handlers.add(task)
            heartbeat = asyncio.create_task(self._heartbeat(stream, message))
            try:
                await asyncio.wait({task})
            finally:
                self._handlers.discard(task)
                heartbeat.cancel()
            if task.cancelled():
                await self._release(stream, message)
            elif (error := task.exception()) is not None:
                await self._nack(stream, message, error)
            else:
                await self._acknowledge(stream, message)
        finally:
            self._free.release()

    # -- settling a message ------------------------------------------------------------------
    async def _settle(
        self,
        stream: AsyncConsumeStream,
        on_stream: Callable[[], Awaitable[T]],
        unary: Callable[[], Awaitable[T]],
    ) -> T:
        """On the message's stream while the worker runs; else with the unary call,
        naming the delivery by its receipt: once the stream is gone (broken, or
        replaced), and once the worker stops, so that the stream's window stays
        full and nothing more is pushed to a stopping worker."""
        if not self._stopping.is_set() and not stream.ended:
            try:
                return await on_stream()
            except (MessageNotHeld, NotFound):
                raise
            except EventStreamingError as exc:
                log.info("the stream is gone (%s): settling by receipt", exc)
        return await unary()

    async def _heartbeat(self, stream: AsyncConsumeStream, message: QueueMessage) -> None:
        s = self.settings
        event_id, receipt = _named(message)
        while True:
            await asyncio.sleep(s.heartbeat_interval.total_seconds())
            try:
                await self._settle(
                    stream,
                    lambda: stream.extend(message, visibility_timeout=s.visibility_timeout),
                    lambda: self._client.extend_visibility(
                        s.stream_name,
                        s.consumer_id,
                        event_id,
                        s.visibility_timeout,
                        receipt=receipt,
                    ),
                )
                self.stats.extensions += 1
            except (MessageNotHeld, NotFound):
                log.warning("lease on %s lost while its handler ran", message.event_id)
                return
            except EventStreamingError as exc:
                log.warning("extending the lease on %s failed: %s", message.event_id, exc)

    async def _acknowledge(self, stream: AsyncConsumeStream, message: QueueMessage) -> None:
        s = self.settings
        event_id, receipt = _named(message)
        try:
            result = await self._settle(
                stream,
                lambda: stream.ack(message),
                lambda: self._client.acknowledge(
                    s.stream_name,
                    s.consumer_id,
                    [event_id] if event_id else (),
                    receipts=[receipt] if receipt else (),
                ),
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

    async def _give_back(
        self,
        stream: AsyncConsumeStream,
        message: QueueMessage,
        delay: timedelta | None,
        reason: str,
    ) -> None:
        s = self.settings
        event_id, receipt = _named(message)
        await self._settle(
            stream,
            lambda: stream.nack(message, delay=delay, reason=reason),
            lambda: self._client.nack(
                s.stream_name, s.consumer_id, event_id, receipt=receipt, delay=delay, reason=reason
            ),
        )

    async def _nack(
        self, stream: AsyncConsumeStream, message: QueueMessage, error: BaseException
    ) -> None:
        log.info("handler failed on %s: %s", message.event_id, failure_reason(error))
        try:
            await self._give_back(stream, message, self.settings.nack_delay, failure_reason(error))
            self.stats.nacked += 1
        except EventStreamingError as exc:
            log.warning("nacking %s failed: %s", message.event_id, exc)

    async def _release(self, stream: AsyncConsumeStream, message: QueueMessage) -> None:
        """A message whose handler was cancelled by stop(): visible again at once (an
        explicit zero delay, whatever the queue's retry delay), with the reason."""
        try:
            await self._give_back(stream, message, timedelta(0), STOPPED_REASON)
            self.stats.released += 1
        except EventStreamingError as exc:
            log.warning("releasing %s failed: %s", message.event_id, exc)


def _named(message: QueueMessage) -> tuple[str | None, str | None]:
    """(event_id, receipt): how the unary calls name a message, by its delivery's
    receipt (by id when it has none)."""
    return _convert.named_message(message, None, None)

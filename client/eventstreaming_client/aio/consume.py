"""Consume for asyncio code: queue messages pushed over one stream, with their
acks, nacks and extends sent on the same stream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client.errors import (
    ConsumeStreamClosed,
    EventStreamingError,
    error_from_failure,
    handle_rpc_error,
)
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import AckResult, QueueMessage


class _End:
    """Put after the last message: the stream is over (with its error, if any)."""

    def __init__(self, error: EventStreamingError | None) -> None:
        self.error = error


class AsyncConsumeStream:
    """Messages of one queue pushed by the server as soon as they are visible, never
    more than ``max_outstanding`` held by this stream and not yet acknowledged,
    nacked or run out of lease. Iterate it for the messages (each a lease, as
    ``dequeue`` gives); ``ack``, ``nack`` and ``extend`` them on the same stream,
    each awaited on its own and answered in the order sent.

    Made by :meth:`AsyncClient.consume_stream`; use it as ``async with``. Leaving
    the block (or :meth:`close`) half-closes the stream: the server gives back at
    once every message the stream still holds (visible again, the attempt
    counted), messages received and not yet handed out included, and the
    iteration ends. When the connection breaks or the server stops, the iteration
    raises that error (``Unavailable``), so do the requests still waiting, and
    the messages held stay leased to ``consumer_id`` until their leases run out
    (acknowledge them with the unary calls and their receipts meanwhile).
    """

    def __init__(
        self,
        call: Any,
        start: pb.ConsumeRequest,
    ) -> None:
        self._call = call
        self.stream_name: str = start.start.stream_name
        #: The consumer id the messages are leased to.
        self.consumer_id: str = start.start.consumer_id
        #: Messages received so far, and those that were never handed out (given
        #: back by the close).
        self.received = 0
        self._handed_out = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[pb.ConsumeResult]] = {}
        self._messages: asyncio.Queue[QueueMessage | _End] = asyncio.Queue()
        self._writing = asyncio.Lock()
        self._started = asyncio.Event()
        self._closed = False
        self._ended: EventStreamingError | None = None
        self._finished = False
        self._reader = asyncio.create_task(self._read(start), name="consume-stream")

    # -- the messages ------------------------------------------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> QueueMessage:
        if self._finished:
            raise StopAsyncIteration
        item = await self._messages.get()
        if isinstance(item, _End):
            self._finished = True
            self._messages.put_nowait(item)  # for any other reader
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        self._handed_out += 1
        return item

    @property
    def unread(self) -> int:
        """Messages received and not handed out by the iteration (after close: those
        the close gave back unseen)."""
        return self.received - self._handed_out

    @property
    def ended(self) -> bool:
        """True once the call is over (closed, or ended by an error)."""
        return self._reader.done()

    # -- acks, nacks, extends --------------------------------------------------------------
    async def ack(
        self,
        *messages: QueueMessage,
        event_ids: Sequence[str] = (),
        receipts: Sequence[str] = (),
    ) -> AckResult:
        """Acknowledge messages: the ones given (by their receipts), or by
        ``event_ids`` (an id of a message delivered on this stream stands for that
        delivery) or ``receipts``. Per-message outcomes, as ``acknowledge`` gives;
        more than 1,000 go as several requests, merged here."""
        parts = _convert.ack_chunks(*_convert.ack_named(messages, event_ids, receipts))
        answers = await asyncio.gather(
            *(
                self._send(functools.partial(_convert.consume_ack, ids=i, receipts=r))
                for i, r in parts
            )
        )
        return _convert.merge_ack_results([_convert.ack_result(a) for a in answers])

    async def nack(
        self,
        message: QueueMessage | None = None,
        *,
        event_id: str | None = None,
        receipt: str | None = None,
        delay: timedelta | None = None,
        reason: str = "",
    ) -> None:
        """Give a message back (``message``, or by ``event_id`` or ``receipt``):
        visible again after ``delay`` (``timedelta(0)``: at once; None: after the
        queue's retry delay). Raises ``MessageNotHeld`` / ``MessageNotFound`` as
        ``nack`` does."""
        event_id, receipt = _convert.named_message(message, event_id, receipt)
        answer = await self._send(
            lambda n: _convert.consume_nack(n, event_id, receipt, delay, reason)
        )
        self._raise_failure(answer)

    async def extend(
        self,
        message: QueueMessage | None = None,
        *,
        visibility_timeout: timedelta,
        event_id: str | None = None,
        receipt: str | None = None,
    ) -> datetime | None:
        """Make a held message's lease end ``visibility_timeout`` from now; returns
        the new end. Raises ``MessageNotHeld`` / ``MessageNotFound`` as
        ``extend_visibility`` does."""
        event_id, receipt = _convert.named_message(message, event_id, receipt)
        answer = await self._send(
            lambda n: _convert.consume_extend(n, event_id, receipt, visibility_timeout)
        )
        self._raise_failure(answer)
        return _convert.from_timestamp(answer.visible_until, answer.HasField("visible_until"))

    def _raise_failure(self, answer: pb.ConsumeResult) -> None:
        if answer.failed:
            failure = answer.failed[0]
            raise error_from_failure(
                self.stream_name, failure.event_id, failure.reason, failure.receipt
            )

    async def _send(self, make: Callable[[int], pb.ConsumeRequest]) -> pb.ConsumeResult:
        """Send the request ``make(request_id)`` builds (built first, so that bad
        input fails before anything is sent); its answer."""
        request_id = next(self._ids)
        request = make(request_id)
        answer: asyncio.Future[pb.ConsumeResult] = asyncio.get_running_loop().create_future()
        await self._started.wait()
        async with self._writing:
            if self._ended is not None:
                raise self._ended
            if self._closed:
                raise ConsumeStreamClosed("the Consume stream was closed")
            self._pending[request_id] = answer
            try:
                await self._call.write(request)
            except grpc.RpcError as exc:
                self._pending.pop(request_id, None)
                raise handle_rpc_error(exc) from None
            except asyncio.InvalidStateError:
                self._pending.pop(request_id, None)
                raise self._ended or ConsumeStreamClosed("the Consume stream ended") from None
        return await answer

    # -- the end ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Half-close: the server answers what was sent, gives back every message
        the stream still holds (at once) and ends the call. The iteration then
        ends; messages received and not yet handed out are dropped (given back)."""
        await self._started.wait()
        async with self._writing:
            if not self._closed and self._ended is None:
                self._closed = True
                # Ended already when this fails: the reader has the reason.
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await self._call.done_writing()
            self._closed = True
        await asyncio.shield(self._reader)
        self._drop_unread()

    def cancel(self) -> None:
        """Break the call off without a half-close: the messages held are not given
        back, they stay leased until their leases run out (as when a connection
        breaks)."""
        self._call.cancel()

    def _drop_unread(self) -> None:
        """After a close: the messages not handed out were given back; the
        iteration ends without them."""
        if self._closed:
            while not self._messages.empty():
                self._messages.get_nowait()
            self._messages.put_nowait(_End(None))

    async def _read(self, start: pb.ConsumeRequest) -> None:
        ended: EventStreamingError | None = None
        try:
            try:
                await self._call.write(start)
            except asyncio.InvalidStateError:
                pass  # the call is over already: reading it gives its status
            finally:
                self._started.set()
            async for response in self._call:
                kind = response.WhichOneof("kind")
                if kind == "message":
                    self._deliver(response.message)
                elif kind == "batch":
                    for message in response.batch.messages:
                        self._deliver(message)
                elif kind == "result":
                    waiting = self._pending.pop(response.result.request_id, None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(response.result)
        except grpc.RpcError as exc:
            ended = handle_rpc_error(exc)
        except asyncio.CancelledError:
            ended = EventStreamingError("the Consume stream was cancelled")
        except Exception as exc:  # never leave the iteration waiting
            ended = EventStreamingError(f"the Consume stream failed: {exc!r}")
        if ended is None and self._pending:
            ended = EventStreamingError("the Consume stream ended before answering")
        self._ended = ended or ConsumeStreamClosed("the Consume stream ended")
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(self._ended)
        self._pending.clear()
        self._messages.put_nowait(_End(ended))

    def _deliver(self, message: pb.QueueMessage) -> None:
        self.received += 1
        self._messages.put_nowait(_convert.queue_message(message))

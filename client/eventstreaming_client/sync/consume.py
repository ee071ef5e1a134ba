"""Consume for blocking code: queue messages pushed over one stream, with their
acks, nacks and extends sent on the same stream."""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
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
from eventstreaming_client.sync._requests import RequestPipe


class _End:
    def __init__(self, error: EventStreamingError | None) -> None:
        self.error = error


class ConsumeStream:
    """Messages of one queue pushed by the server as soon as they are visible, never
    more than ``max_outstanding`` held by this stream and not yet acknowledged,
    nacked or run out of lease. Iterate it (or call :meth:`receive` with a
    timeout) for the messages; ``ack``, ``nack`` and ``extend`` them on the same
    stream, from any thread, each answered in the order sent.

    Made by :meth:`Client.consume_stream`; use it as ``with``. Leaving the block
    (or :meth:`close`, from any thread) half-closes the stream: the server gives
    back at once every message the stream still holds (visible again, the
    attempt counted), messages received and not yet handed out included, and the
    iteration ends. When the connection breaks or the server stops, the iteration
    raises that error (``Unavailable``), so do the requests still waiting.
    """

    def __init__(self, method: Any, metadata: Sequence[tuple[str, str]], start: pb.ConsumeRequest):
        self.stream_name: str = start.start.stream_name
        #: The consumer id the messages are leased to.
        self.consumer_id: str = start.start.consumer_id
        #: Messages received so far.
        self.received = 0
        self._handed_out = 0
        self._requests = RequestPipe()
        self._requests.put(start)
        self._call = method(iter(self._requests), metadata=metadata)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[pb.ConsumeResult]] = {}
        self._messages: queue.SimpleQueue[QueueMessage | _End] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._ended: EventStreamingError | None = None
        self._finished = False
        self._reader = threading.Thread(target=self._read, name="consume-stream", daemon=True)
        self._reader.start()

    # -- the messages ------------------------------------------------------------------------
    def __iter__(self) -> Self:
        return self

    def __next__(self) -> QueueMessage:
        message = self._next(None)
        if message is None:
            raise StopIteration
        return message

    def receive(self, timeout: float | timedelta | None = None) -> QueueMessage | None:
        """The next message; None when none came within ``timeout`` (seconds or a
        timedelta; None: wait for one) or the stream is over (see :attr:`ended`).
        Raises the error that ended the stream."""
        wait = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return self._next(wait)

    def _next(self, timeout: float | None) -> QueueMessage | None:
        if self._finished:
            return None
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._finished = True
            self._messages.put(item)  # for any other reader
            if item.error is not None:
                raise item.error
            return None
        with self._lock:
            self._handed_out += 1
        return item

    @property
    def unread(self) -> int:
        """Messages received and not handed out (after close: those the close gave
        back unseen)."""
        return self.received - self._handed_out

    @property
    def ended(self) -> bool:
        """True once the call is over (closed, or ended by an error)."""
        return not self._reader.is_alive()

    # -- acks, nacks, extends --------------------------------------------------------------
    def ack(
        self,
        *messages: QueueMessage,
        event_ids: Sequence[str] = (),
        receipts: Sequence[str] = (),
    ) -> AckResult:
        """Acknowledge messages: the ones given (by their receipts), or by
        ``event_ids`` or ``receipts``. Per-message outcomes, as ``acknowledge``
        gives; more than 1,000 go as several requests, merged here."""
        parts = _convert.ack_chunks(*_convert.ack_named(messages, event_ids, receipts))
        futures = [
            self._send(functools.partial(_convert.consume_ack, ids=ids, receipts=handles))
            for ids, handles in parts
        ]
        return _convert.merge_ack_results([_convert.ack_result(f.result()) for f in futures])

    def nack(
        self,
        message: QueueMessage | None = None,
        *,
        event_id: str | None = None,
        receipt: str | None = None,
        delay: timedelta | None = None,
        reason: str = "",
    ) -> None:
        """Give a message back: visible again after ``delay`` (``timedelta(0)``: at
        once; None: after the queue's retry delay). Raises ``MessageNotHeld`` /
        ``MessageNotFound`` as ``nack`` does."""
        event_id, receipt = _convert.named_message(message, event_id, receipt)
        answer = self._send(
            lambda n: _convert.consume_nack(n, event_id, receipt, delay, reason)
        ).result()
        self._raise_failure(answer)

    def extend(
        self,
        message: QueueMessage | None = None,
        *,
        visibility_timeout: timedelta,
        event_id: str | None = None,
        receipt: str | None = None,
    ) -> datetime | None:
        """Make a held message's lease end ``visibility_timeout`` from now; returns
        the new end. Raises ``MessageNotHeld`` / ``MessageNotFound``."""
        event_id, receipt = _convert.named_message(message, event_id, receipt)
        answer = self._send(
            lambda n: _convert.consume_extend(n, event_id, receipt, visibility_timeout)
        ).result()
        self._raise_failure(answer)
        return _convert.from_timestamp(answer.visible_until, answer.HasField("visible_until"))

    def _raise_failure(self, answer: pb.ConsumeResult) -> None:
        if answer.failed:
            failure = answer.failed[0]
            raise error_from_failure(
                self.stream_name, failure.event_id, failure.reason, failure.receipt
            )

    def _send(self, make: Callable[[int], pb.ConsumeRequest]) -> Future[pb.ConsumeResult]:
        answer: Future[pb.ConsumeResult] = Future()
        with self._lock:
            request_id = next(self._ids)
            request = make(request_id)  # bad input fails before anything is sent
            if self._ended is not None:
                raise self._ended
            if self._closed:
                raise ConsumeStreamClosed("the Consume stream was closed")
            self._pending[request_id] = answer
            self._requests.put(request)
        return answer

    # -- the end ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Half-close: the server answers what was sent, gives back every message
        the stream still holds (at once) and ends the call. The iteration then
        ends; messages received and not yet handed out are dropped (given back)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._requests.close()
        self._reader.join()
        # The messages not handed out were given back: the iteration ends without them.
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                break
        self._messages.put(_End(None))

    def cancel(self) -> None:
        """Break the call off without a half-close: the messages held stay leased
        until their leases run out (as when a connection breaks)."""
        self._call.cancel()

    def _read(self) -> None:
        ended: EventStreamingError | None = None
        try:
            for response in self._call:
                kind = response.WhichOneof("kind")
                if kind == "message":
                    self._deliver(response.message)
                elif kind == "batch":
                    for message in response.batch.messages:
                        self._deliver(message)
                elif kind == "result":
                    with self._lock:
                        waiting = self._pending.pop(response.result.request_id, None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(response.result)
        except grpc.RpcError as exc:
            ended = handle_rpc_error(exc)
        except Exception as exc:  # never leave the iteration waiting
            ended = EventStreamingError(f"the Consume stream failed: {exc!r}")
        with self._lock:
            if ended is None and self._pending:
                ended = EventStreamingError("the Consume stream ended before answering")
            self._ended = ended or ConsumeStreamClosed("the Consume stream ended")
            waiting_still = list(self._pending.values())
            self._pending.clear()
            if not self._closed:
                self._closed = True
                self._requests.close()  # gRPC's thread that sends them ends too
        for waiting in waiting_still:
            if not waiting.done():
                waiting.set_exception(self._ended)
        self._messages.put(_End(ended))

    def _deliver(self, message: pb.QueueMessage) -> None:
        with self._lock:
            self.received += 1
        self._messages.put(_convert.queue_message(message))

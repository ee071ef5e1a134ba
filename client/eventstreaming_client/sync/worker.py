"""A queue worker (threads): lease, run the handler with its lease kept alive,
acknowledge or nack, stop cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client._worker_common import (
    STOPPED_REASON,
    WorkerSettings,
    WorkerStats,
    failure_reason,
    log,
)
from eventstreaming_client.errors import (
    EventStreamingError,
    MessageNotHeld,
    NotFound,
    handle_rpc_error,
)
from eventstreaming_client.models import QueueMessage

if TYPE_CHECKING:
    from eventstreaming_client.sync.client import Client

Handler = Callable[[QueueMessage], object]


class _Held:
    """A message a slot is handling, and when its lease next needs extending."""

    def __init__(self, message: QueueMessage, next_beat: float) -> None:
        self.message = message
        self.next_beat = next_beat
        self.released = False


class Worker:
    """Runs ``handler`` on a queue's messages in ``concurrency`` threads.

    Each slot thread leases one message at a time with a long-polling ``Dequeue``
    (``poll_wait``), for ``visibility_timeout``; while its handler runs, a
    heartbeat thread extends the lease every ``heartbeat_interval`` (default: a
    third of it), so a slow handler keeps its message. A handler that returns gets
    its message acknowledged; one that raises gets it nacked, with the exception as
    the reason (and ``nack_delay``, else the queue's retry settings). :meth:`stop`
    stops leasing (long polls are cancelled), lets running handlers finish for up
    to ``drain_timeout``, and gives back the messages of handlers still running,
    visible again at once (an explicit zero delay, whatever the queue's retry
    delay). Acks, nacks and extensions name each delivery by its receipt.

    ``with client.consume(queue, handler, concurrency=4) as worker:`` runs it for
    the block; ``worker.wait()`` blocks until another thread (or a signal handler)
    calls ``stop()``.
    """

    def __init__(
        self,
        client: Client,
        stream_name: str,
        handler: Handler,
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
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._polls: set[Any] = set()
        self._held: dict[str, _Held] = {}

    @property
    def consumer_id(self) -> str:
        return self.settings.consumer_id

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stopped.is_set()

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the worker was started already")
        self._threads = [
            threading.Thread(target=self._slot, name=f"worker-slot-{i}", daemon=True)
            for i in range(self.settings.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        # Beats until the worker has stopped (also while stop() drains).
        threading.Thread(target=self._heartbeats, name="worker-heartbeat", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Stop leasing; let running handlers finish (up to ``drain_timeout``), then
        give back the messages of those still running. Returns once done."""
        self._stopping.set()
        with self._lock:
            polls = list(self._polls)
        for poll in polls:
            poll.cancel()
        deadline = time.monotonic() + self.settings.drain_timeout.total_seconds()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = [held for held in self._held.values() if not held.released]
            for held in stuck:
                held.released = True
        for held in stuck:
            self._release(held.message)
        self._stopped.set()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the slots -------------------------------------------------------------------------
    def _dequeue(self) -> list[QueueMessage]:
        """One long poll that ``stop`` can cut short (the call is cancelled)."""
        s = self.settings
        request = _convert.dequeue_request(
            s.stream_name, s.consumer_id, s.visibility_timeout, 1, s.poll_wait
        )
        poll = self._client.stub.Dequeue.future(
            request,
            timeout=self._client.options.timeout + s.poll_wait.total_seconds(),
            metadata=self._client.options.metadata,
        )
        with self._lock:
            self._polls.add(poll)
        try:
            if self._stopping.is_set():
                poll.cancel()
            reply = poll.result()
        except grpc.FutureCancelledError:
            return []
        except grpc.RpcError as exc:
            if self._stopping.is_set():
                return []
            raise handle_rpc_error(exc) from None
        finally:
            with self._lock:
                self._polls.discard(poll)
        return [_convert.queue_message(m) for m in reply.messages]

    def _slot(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                messages = self._dequeue()
            except EventStreamingError as exc:
                failures += 1
                log.warning("dequeue from %s failed: %s", self.settings.stream_name, exc)
                self._stopping.wait(self._client.options.retry.backoff(failures))
                continue
            failures = 0
            for message in messages:
                self._process(message)

    def _process(self, message: QueueMessage) -> None:
        beat = self.settings.heartbeat_interval.total_seconds()
        held = _Held(message, time.monotonic() + beat)
        with self._lock:
            self._held[message.event_id] = held
        error: BaseException | None = None
        try:
            self._handler(message)
        except Exception as exc:
            error = exc
        with self._lock:
            self._held.pop(message.event_id, None)
            released = held.released
            held.released = True
        if released:
            return  # given back by stop() while the handler overran the drain time
        if error is not None:
            self._nack(message, error)
        else:
            self._acknowledge(message)

    def _heartbeats(self) -> None:
        s = self.settings
        tick = min(1.0, s.heartbeat_interval.total_seconds() / 4)
        while not self._stopped.wait(tick):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if h.next_beat <= now and not h.released]
            for held in due:
                held.next_beat = now + s.heartbeat_interval.total_seconds()
                event_id, receipt = _named(held.message)
                try:
                    self._client.extend_visibility(
                        s.stream_name,
                        s.consumer_id,
                        event_id,
                        s.visibility_timeout,
                        receipt=receipt,
                    )
                    self.stats.extensions += 1
                except (MessageNotHeld, NotFound):
                    log.warning("lease on %s lost while its handler ran", held.message.event_id)
                    held.next_beat = float("inf")
                except EventStreamingError as exc:
                    log.warning("extending the lease on %s failed: %s", held.message.event_id, exc)

    def _acknowledge(self, message: QueueMessage) -> None:
        s = self.settings
        event_id, receipt = _named(message)
        try:
            result = self._client.acknowledge(
                s.stream_name,
                s.consumer_id,
                [event_id] if event_id else (),
                receipts=[receipt] if receipt else (),
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

    def _nack(self, message: QueueMessage, error: BaseException) -> None:
        s = self.settings
        log.info("handler failed on %s: %s", message.event_id, failure_reason(error))
        event_id, receipt = _named(message)
        try:
            self._client.nack(
                s.stream_name,
                s.consumer_id,
                event_id,
                receipt=receipt,
                delay=s.nack_delay,
                reason=failure_reason(error),
            )
            self.stats.nacked += 1
        except EventStreamingError as exc:
            log.warning("nacking %s failed: %s", message.event_id, exc)

    def _release(self, message: QueueMessage) -> None:
        s = self.settings
        event_id, receipt = _named(message)
        try:
            # An explicit zero delay: at once, whatever the queue's retry delay.
            self._client.nack(
                s.stream_name,
                s.consumer_id,
                event_id,
                receipt=receipt,
                delay=timedelta(0),
                reason=STOPPED_REASON,
            )
            self.stats.released += 1
        except EventStreamingError as exc:
            log.warning("releasing %s failed: %s", message.event_id, exc)


def _named(message: QueueMessage) -> tuple[str | None, str | None]:
    """(event_id, receipt): a message named by its delivery's receipt (by id when it
    has none), so that nothing done here can touch a later delivery of it."""
    return _convert.named_message(message, None, None)

"""The blocking client: one method per RPC, plain Python values in and out. It is
safe to share between threads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client._resume import SubscriptionStart
from eventstreaming_client._worker_common import default_consumer_id
from eventstreaming_client.errors import (
    CheckpointAlreadyCommitted,
    ConsumerOffsetNotFound,
    Unavailable,
    handle_rpc_error,
)
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from eventstreaming_client.models import (
    ALL,
    AckResult,
    AppendResult,
    ConsumerCheckpoint,
    DeadLetterPage,
    EnqueueResult,
    NewEvent,
    QueueMessage,
    ReadAllResult,
    ReadResult,
    RecordedEvent,
    StreamAppend,
    StreamConfiguration,
    StreamMetadata,
    StreamPage,
    StreamSummary,
)
from eventstreaming_client.options import ConnectionOptions, RetryPolicy, seconds
from eventstreaming_client.sync.consume import ConsumeStream
from eventstreaming_client.sync.session import AppendSession
from eventstreaming_client.sync.subscription import Subscription
from eventstreaming_client.sync.worker import Handler, Worker


class Client:
    """A connection to the EventStreaming service for blocking code (scripts,
    threads, the eventsourcing persistence module); safe to share between threads.

    ``Client("host:50051", token=..., tls=True)``; every keyword of
    :class:`~eventstreaming_client.options.ConnectionOptions` is accepted. Use it
    as ``with`` or call :meth:`close`. Methods raise the exceptions of
    :mod:`eventstreaming_client.errors`.
    """

    def __init__(self, address: str | None = None, **options: Any) -> None:
        if address is not None:
            options["address"] = address
        self.options = ConnectionOptions(**options)
        credentials = self.options.credentials()
        if credentials is None:
            self._channel = grpc.insecure_channel(
                self.options.address, options=self.options.grpc_options()
            )
        else:
            self._channel = grpc.secure_channel(
                self.options.address, credentials, options=self.options.grpc_options()
            )
        self._stub = pb_grpc.EventStreamingStub(self._channel)
        self._metadata = self.options.metadata

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def stub(self) -> pb_grpc.EventStreamingStub:
        """The generated stub on this client's channel, for what the methods here do
        not cover (pass ``metadata=`` yourself when a token is set)."""
        return self._stub

    # -- the call path: deadline, token, retries, errors ---------------------------------
    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        retry: bool,
        timeout: float | timedelta | None = None,
        extra_time: float = 0.0,
    ) -> Any:
        budget = seconds(timeout) or self.options.timeout
        deadline = time.monotonic() + budget + extra_time
        policy: RetryPolicy = self.options.retry
        attempt = 0
        while True:
            try:
                return method(
                    request,
                    timeout=max(0.001, deadline - time.monotonic()),
                    metadata=self._metadata,
                )
            except grpc.RpcError as exc:
                error = handle_rpc_error(exc)
            attempt += 1
            if not retry or not isinstance(error, Unavailable) or attempt >= policy.max_attempts:
                raise error from None
            delay = policy.backoff(attempt - 1)
            if time.monotonic() + delay >= deadline:
                raise error from None
            time.sleep(delay)

    # -- persistent streams --------------------------------------------------------------
    def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        *,
        expected_last_offset: int | None = None,
        timeout: float | timedelta | None = None,
    ) -> AppendResult:
        """Append ``events`` atomically. ``expected_last_offset``: None appends
        whatever the stream holds, -1 requires no events yet, N requires last offset
        N (else :class:`~eventstreaming_client.errors.WrongExpectedOffset`). Events
        without an id get one here, so a retried append is written once."""
        request = _convert.append_request(
            stream_name, _convert.with_ids(events), expected_last_offset
        )
        reply = self._call(self._stub.AppendToStream, request, retry=True, timeout=timeout)
        return _convert.append_result(reply)

    def append_to_streams(
        self,
        appends: Sequence[StreamAppend],
        *,
        checkpoint: ConsumerCheckpoint | None = None,
        timeout: float | timedelta | None = None,
    ) -> list[AppendResult]:
        """Append to several streams (and commit ``checkpoint``) atomically: all or
        nothing. One result per append, in order."""
        request = _convert.append_to_streams_request(_convert.with_stream_ids(appends), checkpoint)
        reply = self._call(self._stub.AppendToStreams, request, retry=True, timeout=timeout)
        return [_convert.append_result(r) for r in reply.results]

    def append_session(self) -> AppendSession:
        """A bidirectional AppendSession: appends pipelined over one call (see
        :class:`AppendSession`): ``submit_append_to_stream`` returns a future at
        once, ``append_to_stream`` waits for its answer. The token goes with it;
        no deadline applies to the session itself."""
        return AppendSession(self._stub.AppendSession, self._metadata)

    def read_stream(
        self,
        stream_name: str,
        *,
        from_offset: int = 0,
        max_count: int = 0,
        backward: bool = False,
        from_time: datetime | None = None,
        event_types: Sequence[str] = (),
        timeout: float | timedelta | None = None,
    ) -> ReadResult:
        """One page of events (``max_count`` 0 means the server's default, 100).
        Backward: from ``from_offset`` (-1: the last) down."""
        request = _convert.read_request(
            stream_name, from_offset, max_count, backward, from_time, event_types
        )
        reply = self._call(self._stub.ReadStream, request, retry=True, timeout=timeout)
        return _convert.read_result(reply)

    def iter_stream(
        self,
        stream_name: str,
        *,
        from_offset: int = 0,
        backward: bool = False,
        from_time: datetime | None = None,
        event_types: Sequence[str] = (),
        page_size: int = 0,
    ) -> Iterator[RecordedEvent]:
        """Every event from ``from_offset`` to the end (or the start, backward), a
        page at a time."""
        offset = from_offset
        while True:
            page = self.read_stream(
                stream_name,
                from_offset=offset,
                max_count=page_size,
                backward=backward,
                from_time=from_time,
                event_types=event_types,
            )
            yield from page.events
            if page.end_of_stream or (backward and page.next_offset < 0):
                return
            offset = page.next_offset

    def get_stream_length(
        self, stream_name: str, *, timeout: float | timedelta | None = None
    ) -> int:
        request = pb.GetStreamLengthRequest(stream_name=stream_name)
        reply = self._call(self._stub.GetStreamLength, request, retry=True, timeout=timeout)
        return int(reply.length)

    def get_stream_metadata(
        self, stream_name: str, *, timeout: float | timedelta | None = None
    ) -> StreamMetadata:
        request = pb.GetStreamMetadataRequest(stream_name=stream_name)
        reply = self._call(self._stub.GetStreamMetadata, request, retry=True, timeout=timeout)
        return _convert.stream_metadata(reply)

    # -- the global log ------------------------------------------------------------------
    def read_all(
        self,
        *,
        from_position: int = 0,
        max_count: int = 0,
        backward: bool = False,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        timeout: float | timedelta | None = None,
    ) -> ReadAllResult:
        """One page of the global log from ``from_position`` (0: the start; backward:
        0 means the end)."""
        request = pb.ReadAllRequest(
            from_position=from_position,
            max_count=max_count,
            backward=backward,
            filter=_convert.all_filter(stream_prefixes, event_types),
        )
        reply = self._call(self._stub.ReadAll, request, retry=True, timeout=timeout)
        return _convert.read_all_result(reply)

    # -- queues --------------------------------------------------------------------------
    def enqueue(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        *,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        timeout: float | timedelta | None = None,
    ) -> EnqueueResult:
        """Add messages to a queue, atomically. ``delay`` (or ``deliver_at``, an
        aware datetime; not both) keeps them invisible until then, at most 7 days.
        Returns their ids in order (a list), with ``duplicate_event_ids``: those
        the queue had seen within its deduplication window, not written again.
        Not retried here (a queue whose deduplication window is 0 would deliver a
        repeated message twice); a producer that gives its messages ids can repeat
        the call safely and finds its earlier writes among the duplicates."""
        request = _convert.enqueue_request(stream_name, events, delay, deliver_at)
        reply = self._call(self._stub.Enqueue, request, retry=False, timeout=timeout)
        return _convert.enqueue_result(reply)

    def dequeue(
        self,
        stream_name: str,
        consumer_id: str,
        *,
        max_messages: int = 1,
        visibility_timeout: timedelta | None = None,
        wait_time: timedelta | None = None,
        timeout: float | timedelta | None = None,
    ) -> list[QueueMessage]:
        """Lease up to ``max_messages``; with ``wait_time``, wait (long polling) for
        one to be visible. Retried: a lease whose answer was lost only delays that
        message until the lease runs out."""
        request = _convert.dequeue_request(
            stream_name, consumer_id, visibility_timeout, max_messages, wait_time
        )
        reply = self._call(
            self._stub.Dequeue,
            request,
            retry=True,
            timeout=timeout,
            extra_time=seconds(wait_time) or 0.0,
        )
        return [_convert.queue_message(m) for m in reply.messages]

    def acknowledge(
        self,
        stream_name: str,
        consumer_id: str,
        event_ids: Sequence[str] = (),
        *,
        receipts: Sequence[str] = (),
        timeout: float | timedelta | None = None,
    ) -> AckResult:
        """Delete held messages, named by ``event_ids`` or by ``receipts`` (one
        or the other, 1..1000): a receipt acknowledges its message only while that
        delivery is the one held. Those that could not be acknowledged are in
        ``failed`` / ``failures`` (``"NOT_FOUND"`` or ``"NOT_HELD"``)."""
        request = _convert.acknowledge_request(stream_name, consumer_id, event_ids, receipts)
        reply = self._call(self._stub.Acknowledge, request, retry=True, timeout=timeout)
        return _convert.ack_result(reply)

    def nack(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: str | None = None,
        *,
        receipt: str | None = None,
        delay: timedelta | None = None,
        reason: str = "",
        timeout: float | timedelta | None = None,
    ) -> None:
        """Give a held message back (by ``event_id`` or by the ``receipt`` of its
        delivery): visible again after ``delay``; ``timedelta(0)``: at once; None:
        after the queue's retry delay (at once when it has none). On its last
        allowed delivery it goes to the dead letters with ``reason``. Raises
        ``MessageNotHeld`` / ``MessageNotFound``."""
        request = _convert.nack_request(stream_name, consumer_id, event_id, receipt, delay, reason)
        self._call(self._stub.Nack, request, retry=False, timeout=timeout)

    def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        event_id: str | None = None,
        visibility_timeout: timedelta | None = None,
        *,
        receipt: str | None = None,
        timeout: float | timedelta | None = None,
    ) -> datetime | None:
        """Make a held message's lease (by ``event_id`` or by ``receipt``) end
        ``visibility_timeout`` from now (required); returns the new end."""
        request = _convert.extend_request(
            stream_name, consumer_id, event_id, receipt, visibility_timeout
        )
        reply = self._call(self._stub.ExtendVisibility, request, retry=True, timeout=timeout)
        return _convert.from_timestamp(reply.visible_until, reply.HasField("visible_until"))

    def list_dead_letters(
        self,
        stream_name: str,
        *,
        max_count: int = 0,
        page_token: str = "",
        timeout: float | timedelta | None = None,
    ) -> DeadLetterPage:
        request = pb.ListDeadLettersRequest(
            stream_name=stream_name, max_count=max_count, page_token=page_token
        )
        reply = self._call(self._stub.ListDeadLetters, request, retry=True, timeout=timeout)
        return _convert.dead_letter_page(reply)

    def redrive_dead_letters(
        self,
        stream_name: str,
        event_ids: Sequence[str] = (),
        *,
        timeout: float | timedelta | None = None,
    ) -> int:
        request = pb.RedriveDeadLettersRequest(stream_name=stream_name, event_ids=list(event_ids))
        reply = self._call(self._stub.RedriveDeadLetters, request, retry=False, timeout=timeout)
        return int(reply.redriven_count)

    def consume_stream(
        self,
        stream_name: str,
        *,
        consumer_id: str | None = None,
        max_outstanding: int = 10,
        visibility_timeout: timedelta | None = None,
        max_batch: int = 0,
    ) -> ConsumeStream:
        """Open a ``Consume`` stream on a queue: messages are pushed as soon as they
        are visible, at most ``max_outstanding`` (1..1000) held by the stream and
        not yet acknowledged, nacked or run out of lease; ``visibility_timeout``
        is each lease (None: the queue's default); ``max_batch`` (2..100) lets the
        server send messages leased together in one response. ``consumer_id``:
        one per stream (default: a new unique one).

        ``with client.consume_stream(queue) as stream: for message in stream: ...
        stream.ack(message)``. See :class:`ConsumeStream`. The token goes with it;
        no deadline applies to the stream itself."""
        start = _convert.consume_start(
            stream_name,
            default_consumer_id() if consumer_id is None else consumer_id,
            visibility_timeout,
            max_outstanding,
            max_batch,
        )
        return ConsumeStream(self._stub.Consume, self._metadata, start)

    def consume(
        self,
        stream_name: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        consumer_id: str | None = None,
        visibility_timeout: timedelta = timedelta(seconds=30),
        heartbeat_interval: timedelta | None = None,
        poll_wait: timedelta = timedelta(seconds=20),
        nack_delay: timedelta | None = None,
        drain_timeout: timedelta = timedelta(seconds=30),
    ) -> Worker:
        """A worker on a queue (not started): ``with client.consume(...)`` runs it
        in threads until the block ends. See :class:`Worker`."""
        return Worker(
            self,
            stream_name,
            handler,
            concurrency=concurrency,
            consumer_id=consumer_id,
            visibility_timeout=visibility_timeout,
            heartbeat_interval=heartbeat_interval,
            poll_wait=poll_wait,
            nack_delay=nack_delay,
            drain_timeout=drain_timeout,
        )

    # -- consumers and subscriptions -----------------------------------------------------
    def commit_offset(
        self,
        stream_name: str,
        consumer_group: str,
        offset: int,
        *,
        timeout: float | timedelta | None = None,
    ) -> None:
        """Record the last offset (on ``$all``: global position) the group processed."""
        request = pb.CommitOffsetRequest(
            stream_name=stream_name, consumer_group=consumer_group, offset=offset
        )
        self._call(self._stub.CommitOffset, request, retry=True, timeout=timeout)

    def get_consumer_offset(
        self, stream_name: str, consumer_group: str, *, timeout: float | timedelta | None = None
    ) -> int | None:
        """The group's committed offset; None when it never committed."""
        request = pb.GetConsumerOffsetRequest(
            stream_name=stream_name, consumer_group=consumer_group
        )
        try:
            reply = self._call(self._stub.GetConsumerOffset, request, retry=True, timeout=timeout)
        except ConsumerOffsetNotFound:
            return None
        return int(reply.offset)

    def subscribe(
        self,
        stream_name: str,
        *,
        from_offset: int | None = None,
        from_end: bool = False,
        consumer_group: str | None = None,
        from_time: datetime | None = None,
        event_types: Sequence[str] = (),
        stream_prefixes: Sequence[str] = (),
        checkpoint_interval: int = 0,
        until_caught_up: bool = False,
        reconnect: bool = True,
    ) -> Subscription:
        """Follow a stream, or the global log with ``"$all"`` (then ``from_offset``
        is a global position and ``stream_prefixes`` may filter): history first,
        then live events. On UNAVAILABLE or a server restart it subscribes again and
        resumes after the last event it handed out: no gap, no duplicate.
        ``consumer_group`` starts after the group's committed offset, and
        :meth:`Subscription.commit` records progress. ``until_caught_up`` ends
        the iteration once history is delivered."""
        start = SubscriptionStart(
            stream_name,
            from_offset=from_offset,
            from_end=from_end,
            consumer_group=consumer_group,
            from_time=from_time,
            event_types=event_types,
            stream_prefixes=stream_prefixes,
            checkpoint_interval=checkpoint_interval,
        )
        method = self._stub.SubscribeToAll if start.is_all else self._stub.SubscribeToStream
        return Subscription(
            self,
            method,
            start,
            metadata=self._metadata,
            retry=self.options.retry,
            until_caught_up=until_caught_up,
            reconnect=reconnect,
        )

    def process_exactly_once(
        self,
        stream_name: str,
        consumer_group: str,
        handler: Callable[[RecordedEvent], Sequence[StreamAppend]],
        *,
        event_types: Sequence[str] = (),
        stream_prefixes: Sequence[str] = (),
        until_caught_up: bool = False,
    ) -> int:
        """Apply ``handler`` to each event of a stream (or ``$all``) exactly once.

        The handler returns the appends an event leads to (possibly none); they are
        written with ``AppendToStreams`` together with the group's checkpoint at that
        event, in one transaction. After a crash or a retry at any point, processing
        resumes after the last committed event, and an event whose checkpoint is
        already committed is skipped, so each input's outputs are written once.
        Returns the number of events processed (when ``until_caught_up`` ends it).
        """
        processed = 0
        subscription = self.subscribe(
            stream_name,
            consumer_group=consumer_group,
            event_types=event_types,
            stream_prefixes=stream_prefixes,
            until_caught_up=until_caught_up,
        )
        with subscription:
            for item in subscription:
                outputs = handler(item)
                checkpoint = ConsumerCheckpoint(
                    stream_name, consumer_group, subscription.position_of(item)
                )
                try:
                    self.append_to_streams(outputs, checkpoint=checkpoint)
                except CheckpointAlreadyCommitted:
                    continue
                processed += 1
        return processed

    # -- administration ------------------------------------------------------------------
    def configure_stream(
        self,
        stream_name: str,
        configuration: StreamConfiguration,
        *,
        timeout: float | timedelta | None = None,
    ) -> StreamConfiguration:
        request = pb.ConfigureStreamRequest(
            stream_name=stream_name, configuration=_convert.configuration_message(configuration)
        )
        reply = self._call(self._stub.ConfigureStream, request, retry=True, timeout=timeout)
        return _convert.configuration(reply.configuration)

    def get_stream_configuration(
        self, stream_name: str, *, timeout: float | timedelta | None = None
    ) -> StreamConfiguration:
        request = pb.GetStreamConfigurationRequest(stream_name=stream_name)
        reply = self._call(self._stub.GetStreamConfiguration, request, retry=True, timeout=timeout)
        return _convert.configuration(reply.configuration)

    def list_streams(
        self,
        *,
        prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | timedelta | None = None,
    ) -> StreamPage:
        request = pb.ListStreamsRequest(prefix=prefix, page_size=page_size, page_token=page_token)
        reply = self._call(self._stub.ListStreams, request, retry=True, timeout=timeout)
        return _convert.stream_page(reply)

    def iter_streams(self, *, prefix: str = "") -> Iterator[StreamSummary]:
        token = ""
        while True:
            page = self.list_streams(prefix=prefix, page_token=token)
            yield from page.streams
            if not page.next_page_token:
                return
            token = page.next_page_token

    def delete_stream(self, stream_name: str, *, timeout: float | timedelta | None = None) -> None:
        """Delete a stream and all of it. Not retried (a repeat would answer
        NOT_FOUND for a delete that happened)."""
        request = pb.DeleteStreamRequest(stream_name=stream_name)
        self._call(self._stub.DeleteStream, request, retry=False, timeout=timeout)


__all__ = ["ALL", "Client"]

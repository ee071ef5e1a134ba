"""The storage interface: one abstract class, implemented by every backend.

Backends raise only :mod:`storage.errors`; they never import grpc or protobuf.
Validation of user input (names, sizes, JSON) happens before a call reaches here,
so a backend may assume well-formed arguments.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

from storage.errors import WrongExpectedOffset, WrongExpectedOffsets
from storage.receipts import Receipt
from storage.records import (
    NO_ALL_FILTER,
    NO_FILTER,
    AckResult,
    AllFilter,
    AllPage,
    AppendResult,
    ConsumerCheckpoint,
    DeadLetterPage,
    EnqueueResult,
    MessageRef,
    NewEvent,
    PoolUsage,
    QueueMessage,
    QueueTableStats,
    ReadFilter,
    ReadResult,
    RetentionReport,
    StreamAppend,
    StreamConfiguration,
    StreamMetadata,
    StreamPage,
)
from storage.signals import Look, StreamSignals, wait_for_items


class EventStore(abc.ABC):
    """Persistent streams, queues, consumer offsets and stream administration."""

    #: Wake-ups for long polls and live subscriptions. A backend calls
    #: ``signals.notify(name)`` after every committed write to ``name`` (and, for a
    #: shared database, when another replica reports one).
    signals: StreamSignals

    #: The byte budget of the events of one response (reads, dequeues, dead-letter
    #: pages): a page stops early once its events' payloads add up to this, always
    #: holding at least one event (storage.rules.within_budget).
    page_bytes: int

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and get ready; called once before the first operation."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource; called once at shutdown."""

    def pool_usage(self) -> PoolUsage | None:
        """Connections of the backend's pool, open and in use; None without a pool."""
        return None

    # -- persistent streams ------------------------------------------------------
    @abc.abstractmethod
    async def append_to_streams(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> tuple[AppendResult, ...]:
        """Append to every stream of ``appends`` (distinct names) and commit the
        checkpoint, all or nothing; one result per append. The events of one call
        take consecutive global positions, in the order given.

        Raises WrongStreamType, WrongExpectedOffsets (every failing stream),
        DuplicateEvent, and for the checkpoint CheckpointExists, StreamNotFound,
        OffsetOutOfRange.
        """

    def hand_on_append(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> asyncio.Future[tuple[AppendResult, ...]]:
        """append_to_streams without waiting: the future of its results. Appends
        handed on one after the other apply in that order where they touch the
        same stream or checkpoint. The future is storage's: a caller that gives
        up drops it (never cancels it), and the write goes on."""
        return asyncio.ensure_future(self.append_to_streams(appends, checkpoint))

    async def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        """Append atomically (the one-stream case of append_to_streams); see the
        contract for expected offsets and idempotency.

        Raises WrongStreamType, WrongExpectedOffset, DuplicateEvent.
        """
        try:
            (result,) = await self.append_to_streams(
                [StreamAppend(stream_name, events, expected_last_offset)]
            )
        except WrongExpectedOffsets as exc:
            failure: WrongExpectedOffset = exc.failures[0]
            raise failure from None
        return result

    @abc.abstractmethod
    async def read_stream(
        self,
        stream_name: str,
        from_offset: int,
        max_count: int,
        read_filter: ReadFilter = NO_FILTER,
        *,
        backward: bool = False,
    ) -> ReadResult:
        """Events from the first retained offset >= from_offset, ascending; or,
        backward, from the last retained offset <= from_offset (-1: the last),
        descending, with next_offset -1 once the start is reached.

        Raises StreamNotFound, WrongStreamType.
        """

    @abc.abstractmethod
    async def read_all(
        self,
        from_position: int,
        max_count: int,
        read_filter: AllFilter = NO_ALL_FILTER,
        *,
        backward: bool = False,
    ) -> AllPage:
        """The global log: events of every persistent stream in position order,
        from the first position >= from_position; backward from the last position
        <= from_position (0: the end), descending. Gap-safe: a position below one
        already returned never appears later."""

    @abc.abstractmethod
    async def get_stream_length(self, stream_name: str) -> int:
        """Events ever written (last offset + 1). Raises StreamNotFound."""

    @abc.abstractmethod
    async def get_stream_metadata(self, stream_name: str) -> StreamMetadata:
        """Raises StreamNotFound."""

    # -- queues ------------------------------------------------------------------
    # Messages are named by id or by the receipt of one delivery (MessageRef): a
    # receipt acts only while that delivery is the one held.
    @abc.abstractmethod
    async def enqueue(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        deliver_at: datetime | None = None,
    ) -> EnqueueResult:
        """Add messages to the end of a queue, invisible until ``deliver_at`` when
        given. Ids the queue knows (in it, in its dead-letter queue, or enqueued
        within its deduplication window) are not written and are reported as
        duplicates. Keyed messages behind an earlier one of their key wait for it.
        Raises WrongStreamType."""

    async def dequeue(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
        wait_time: timedelta = timedelta(0),
    ) -> Sequence[QueueMessage]:
        """Lease up to max_messages visible messages, oldest first, waiting up to
        wait_time for one to become visible. Raises WrongStreamType.

        Every backend waits alike: :meth:`lease_messages` looks, and between looks
        the wait ends at a write to the stream (``signals``: on a shared database,
        other replicas' writes arrive by notification, and a lost one is found by
        the backend's watch) or when the look said a lease or delay runs out,
        whichever comes first."""
        return await wait_for_items(
            self.signals,
            stream_name,
            wait_time,
            lambda: self.lease_messages(stream_name, consumer_id, visibility_timeout, max_messages),
        )

    @abc.abstractmethod
    async def lease_messages(
        self,
        stream_name: str,
        consumer_id: str,
        visibility_timeout: timedelta | None,
        max_messages: int,
    ) -> Look[QueueMessage]:
        """One look at the queue, never waiting: lease up to max_messages messages
        visible now, oldest first; when there are fewer, say when one may next
        become visible with no write (a lease, delay or retry delay running out).
        What dequeue() repeats while it waits, for callers that wait on their own
        terms (Consume streams). Raises WrongStreamType."""

    @abc.abstractmethod
    async def acknowledge(
        self, stream_name: str, consumer_id: str, targets: Sequence[MessageRef]
    ) -> AckResult:
        """Delete held messages; per-message failures in the result."""

    @abc.abstractmethod
    async def nack(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        delay: timedelta | None,
        reason: str,
    ) -> None:
        """Release a held message, visible again after ``delay`` (None: after the
        stream's retry delay). Raises MessageNotFound, MessageNotHeld."""

    @abc.abstractmethod
    async def extend_visibility(
        self,
        stream_name: str,
        consumer_id: str,
        target: MessageRef,
        visibility_timeout: timedelta,
    ) -> datetime:
        """New lease end, counted from now. Raises MessageNotFound, MessageNotHeld."""

    @abc.abstractmethod
    async def release(self, stream_name: str, consumer_id: str, receipts: Sequence[Receipt]) -> int:
        """Give back the deliveries named, visible again at once with the attempt
        counted (one that had had its last allowed delivery is dead-lettered);
        those no longer held are left alone. Returns how many were given back."""

    @abc.abstractmethod
    async def list_dead_letters(
        self, stream_name: str, max_count: int, page_token: str
    ) -> DeadLetterPage:
        """Raises InvalidPageToken, WrongStreamType."""

    @abc.abstractmethod
    async def redrive_dead_letters(self, stream_name: str, event_ids: Sequence[UUID]) -> int:
        """Move the given (or, when empty, all) dead letters back to the queue."""

    # -- consumers ---------------------------------------------------------------
    @abc.abstractmethod
    async def commit_offset(self, stream_name: str, consumer_group: str, offset: int) -> None:
        """On a log, or on ALL_STREAM (``offset`` a global position).

        Raises StreamNotFound, OffsetOutOfRange, WrongStreamType."""

    @abc.abstractmethod
    async def get_consumer_offset(self, stream_name: str, consumer_group: str) -> int:
        """On a log, or on ALL_STREAM. Raises ConsumerOffsetNotFound."""

    # -- administration ----------------------------------------------------------
    @abc.abstractmethod
    async def configure_stream(
        self, stream_name: str, configuration: StreamConfiguration
    ) -> StreamConfiguration:
        """Create or replace the configuration. Raises StreamTypeChange."""

    @abc.abstractmethod
    async def get_stream_configuration(self, stream_name: str) -> StreamConfiguration:
        """Raises StreamNotFound."""

    @abc.abstractmethod
    async def list_streams(self, prefix: str, page_size: int, page_token: str) -> StreamPage:
        """Streams in name order. Raises InvalidPageToken."""

    @abc.abstractmethod
    async def delete_stream(self, stream_name: str) -> None:
        """Remove the stream and everything of it. Raises StreamNotFound."""

    @abc.abstractmethod
    async def enforce_retention(self, now: datetime | None = None) -> RetentionReport:
        """One retention pass over every persistent stream, and over the queues'
        remembered ids whose deduplication window has passed (now: for tests)."""

    async def queue_table_stats(self) -> QueueTableStats | None:
        """Dead tuples, sizes and in-flight ages of the queue table; None when the
        backend keeps no table."""
        return None

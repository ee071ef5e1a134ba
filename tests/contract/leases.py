"""Queue steps the queue, no-trace and admin contracts share: configured queues,
single leases, and waiting for a lease to run out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from storage.interface import EventStore
from storage.records import (
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    NewEvent,
    QueueMessage,
    StreamConfiguration,
    StreamType,
)

#: A lease short enough to watch run out, long enough to act on before it does.
SHORT_LEASE = timedelta(seconds=0.2)
#: A lease no test outlives.
LONG_LEASE = timedelta(seconds=60)
#: How long a test waits for what should happen within a fraction of a second.
PATIENCE = timedelta(seconds=10)


async def configure_queue(
    store: EventStore,
    stream_name: str,
    *,
    max_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
    visibility: timedelta = timedelta(seconds=30),
) -> StreamConfiguration:
    return await store.configure_stream(
        stream_name,
        StreamConfiguration(
            stream_type=StreamType.EPHEMERAL,
            max_delivery_attempts=max_attempts,
            default_visibility_timeout=visibility,
        ),
    )


async def enqueue(
    store: EventStore,
    stream_name: str,
    events: Sequence[NewEvent],
    deliver_at: datetime | None = None,
) -> list[UUID]:
    """Enqueue ``events``; the ids of the call, checking that none was a duplicate."""
    result = await store.enqueue(stream_name, events, deliver_at)
    assert result.duplicate_event_ids == (), "unexpected duplicates"
    return list(result.event_ids)


async def lease_one(
    store: EventStore,
    stream_name: str,
    consumer_id: str,
    visibility: timedelta | None = LONG_LEASE,
    *,
    wait: timedelta = timedelta(0),
) -> QueueMessage:
    """Exactly one message, leased to ``consumer_id`` (waiting up to ``wait``)."""
    messages = await store.dequeue(stream_name, consumer_id, visibility, 1, wait)
    assert len(messages) == 1, f"expected one message, got {len(messages)}"
    return messages[0]


async def lease_again(
    store: EventStore, stream_name: str, consumer_id: str, visibility: timedelta = LONG_LEASE
) -> QueueMessage:
    """The next delivery, as soon as something becomes visible (a long poll)."""
    return await lease_one(store, stream_name, consumer_id, visibility, wait=PATIENCE)


async def wait_for_lease_end(message: QueueMessage, margin: float = 0.05) -> None:
    """Sleep until ``margin`` seconds after the message's lease has run out."""
    remaining = (message.visible_until - datetime.now(UTC)).total_seconds() + margin
    assert remaining < PATIENCE.total_seconds(), "this lease is not a short one"
    if remaining > 0:
        await asyncio.sleep(remaining)

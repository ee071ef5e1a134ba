"""Queues: delayed delivery, retry backoff, ordering keys, deduplication, receipts,
release, the one-look lease, and the queue's age."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from storage.errors import MessageNotHeld
from storage.interface import EventStore
from storage.records import (
    AckFailure,
    AckFailureReason,
    EnqueueResult,
    NewEvent,
    QueueMessage,
    StreamConfiguration,
    StreamType,
)
from storage.rules import RELEASED_REASON
from tests.contract.events import new_event, new_events, with_ids
from tests.contract.leases import (
    LONG_LEASE,
    PATIENCE,
    SHORT_LEASE,
    enqueue,
    lease_again,
    lease_one,
    wait_for_lease_end,
)
from tests.contract.paging import all_dead_letters


async def configure(store: EventStore, stream_name: str, **settings: object) -> None:
    await store.configure_stream(
        stream_name,
        StreamConfiguration(stream_type=StreamType.EPHEMERAL, **settings),  # type: ignore[arg-type]
    )


def keyed(key: str, n: int = 0) -> NewEvent:
    return new_event("Keyed", {"n": n}, ordering_key=key)


def ids(messages: list[QueueMessage] | tuple[QueueMessage, ...]) -> list[uuid.UUID]:
    return [m.event.event_id for m in messages]


async def lease_all(store: EventStore, stream_name: str, consumer: str = "a") -> list[uuid.UUID]:
    return ids(list(await store.dequeue(stream_name, consumer, LONG_LEASE, 100)))


# -- delayed delivery ------------------------------------------------------------------


async def test_a_delayed_message_is_invisible_until_its_time(
    store: EventStore, stream_name: str
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.5)
    (delayed,) = await enqueue(store, stream_name, new_events(1), deliver_at=at)
    assert await lease_all(store, stream_name) == []
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.pending_count, meta.in_flight_count) == (1, 0)
    message = await lease_again(store, stream_name, "a")
    assert message.event.event_id == delayed
    assert datetime.now(UTC) >= at - timedelta(milliseconds=50)


async def test_a_time_already_past_delivers_at_once(store: EventStore, stream_name: str) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1), deliver_at=past)
    assert await lease_all(store, stream_name) == [event_id]


async def test_delayed_messages_do_not_hold_up_the_rest_and_then_go_oldest_first(
    store: EventStore, stream_name: str
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.4)
    (first,) = await enqueue(store, stream_name, new_events(1), deliver_at=at)
    second, third = await enqueue(store, stream_name, new_events(2))
    assert await lease_all(store, stream_name, "early") == [second, third]
    (later,) = await enqueue(store, stream_name, new_events(1))
    await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)
    # Visible now: the delayed one first, as it was enqueued before the other.
    assert await lease_all(store, stream_name, "late") == [first, later]


async def test_a_long_poll_wakes_when_a_delay_ends(store: EventStore, stream_name: str) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.5)
    (delayed,) = await enqueue(store, stream_name, new_events(1), deliver_at=at)
    started = time.monotonic()
    message = await lease_again(store, stream_name, "a")
    assert message.event.event_id == delayed
    assert time.monotonic() - started < PATIENCE.total_seconds() / 2


# -- retry backoff ---------------------------------------------------------------------

BACKOFF = {
    "retry_initial_delay": timedelta(seconds=0.6),
    "retry_max_delay": timedelta(seconds=5),
    "retry_multiplier": 2.0,
}


async def test_the_retry_settings_are_stored(store: EventStore, stream_name: str) -> None:
    await configure(store, stream_name, deduplication_window=timedelta(minutes=9), **BACKOFF)
    config = await store.get_stream_configuration(stream_name)
    assert (config.retry_initial_delay, config.retry_max_delay, config.retry_multiplier) == (
        timedelta(seconds=0.6),
        timedelta(seconds=5),
        2.0,
    )
    assert config.deduplication_window == timedelta(minutes=9)


async def test_by_default_the_retry_delay_is_none_and_the_window_five_minutes(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    config = await store.get_stream_configuration(stream_name)
    assert (config.retry_initial_delay, config.retry_max_delay) == (timedelta(0), timedelta(0))
    assert config.retry_multiplier == 2.0
    assert config.deduplication_window == timedelta(minutes=5)


async def test_an_expired_lease_waits_out_the_retry_delay(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, **BACKOFF)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    first = await lease_one(store, stream_name, "a", SHORT_LEASE)
    await wait_for_lease_end(first)
    # The lease has run out, but the retry delay (0.6 s, give or take 10%) has not.
    assert await lease_all(store, stream_name, "b") == []
    again = await lease_again(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (event_id, 2)
    waited = datetime.now(UTC) - first.visible_until
    assert waited >= timedelta(seconds=0.5)


async def test_a_nack_without_a_delay_waits_out_the_retry_delay(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, **BACKOFF)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    nacked = time.monotonic()
    await store.nack(stream_name, "a", event_id, None, "later")
    assert await lease_all(store, stream_name, "b") == []
    again = await lease_again(store, stream_name, "b")
    assert again.delivery_attempt == 2
    assert time.monotonic() - nacked >= 0.5


async def test_a_nack_with_an_explicit_delay_uses_it(store: EventStore, stream_name: str) -> None:
    await configure(store, stream_name, **BACKOFF)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "now")
    assert await lease_all(store, stream_name, "b") == [event_id]


async def test_without_a_retry_delay_a_nack_without_delay_is_visible_at_once(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, None, "")
    assert await lease_all(store, stream_name, "b") == [event_id]


async def test_the_last_allowed_lease_is_dead_at_its_end_not_after_the_retry_delay(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, max_delivery_attempts=1, **BACKOFF)
    await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", SHORT_LEASE)
    await wait_for_lease_end(message)
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.pending_count, meta.dead_letter_count) == (0, 1)


# -- ordering keys ---------------------------------------------------------------------


async def test_a_key_delivers_one_message_at_a_time_while_others_flow(
    store: EventStore, stream_name: str
) -> None:
    a1, a2, b1, free, a3 = await enqueue(
        store,
        stream_name,
        [keyed("a", 1), keyed("a", 2), keyed("b", 1), new_event(), keyed("a", 3)],
    )
    assert await lease_all(store, stream_name) == [a1, b1, free]
    assert await lease_all(store, stream_name) == []
    await store.acknowledge(stream_name, "a", [a1])
    assert await lease_all(store, stream_name) == [a2]
    await store.acknowledge(stream_name, "a", [a2, b1])
    assert await lease_all(store, stream_name) == [a3]


async def test_keyed_messages_come_back_with_their_key(store: EventStore, stream_name: str) -> None:
    await enqueue(store, stream_name, [keyed("tenant-7"), new_event()])
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 10)
    assert [m.event.ordering_key for m in leased] == ["tenant-7", ""]


async def test_a_nacked_head_is_delivered_again_before_its_successors(
    store: EventStore, stream_name: str
) -> None:
    first, second = await enqueue(store, stream_name, [keyed("k", 1), keyed("k", 2)])
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", first, timedelta(0), "retry")
    again = await lease_one(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (first, 2)
    assert await lease_all(store, stream_name, "c") == []
    await store.acknowledge(stream_name, "b", [first])
    assert await lease_all(store, stream_name, "c") == [second]


async def test_an_expired_head_is_delivered_again_before_its_successors(
    store: EventStore, stream_name: str
) -> None:
    first, second = await enqueue(store, stream_name, [keyed("k", 1), keyed("k", 2)])
    await lease_one(store, stream_name, "a", SHORT_LEASE)
    again = await lease_again(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (first, 2)
    assert await lease_all(store, stream_name, "c") == []
    assert second not in await lease_all(store, stream_name, "c")


async def test_a_dead_lettered_head_releases_its_key(store: EventStore, stream_name: str) -> None:
    await configure(store, stream_name, max_delivery_attempts=1)
    first, second, third = await enqueue(
        store, stream_name, [keyed("k", 1), keyed("k", 2), keyed("k", 3)]
    )
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", first, timedelta(0), "poison")
    assert await lease_all(store, stream_name, "b") == [second]
    # A last lease running out releases the key too.
    await store.extend_visibility(stream_name, "b", second, SHORT_LEASE)
    message = await lease_again(store, stream_name, "c")
    assert message.event.event_id == third
    letters = await all_dead_letters(store, stream_name)
    assert [(d.event.event_id, d.event.ordering_key) for d in letters] == [
        (first, "k"),
        (second, "k"),
    ]


async def test_a_message_enqueued_behind_a_held_one_of_its_key_waits(
    store: EventStore, stream_name: str
) -> None:
    (held,) = await enqueue(store, stream_name, [keyed("k", 1)])
    await lease_one(store, stream_name, "a")
    (following,) = await enqueue(store, stream_name, [keyed("k", 2)])
    assert await lease_all(store, stream_name, "b") == []
    await store.acknowledge(stream_name, "a", [held])
    assert await lease_all(store, stream_name, "b") == [following]


async def test_a_long_poll_wakes_when_an_ack_frees_the_next_of_a_key(
    store: EventStore, stream_name: str
) -> None:
    held, following = await enqueue(store, stream_name, [keyed("k", 1), keyed("k", 2)])
    await lease_one(store, stream_name, "a")
    poll = asyncio.create_task(lease_again(store, stream_name, "b"))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await store.acknowledge(stream_name, "a", [held])
    message = await asyncio.wait_for(poll, PATIENCE.total_seconds())
    assert message.event.event_id == following


async def test_a_busy_key_does_not_hold_up_other_keys(store: EventStore, stream_name: str) -> None:
    busy = await enqueue(store, stream_name, [keyed("busy", i) for i in range(300)])
    (other,) = await enqueue(store, stream_name, [keyed("other")])
    assert await lease_all(store, stream_name) == [busy[0], other]


async def test_a_redriven_keyed_message_goes_behind_its_key(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, max_delivery_attempts=1)
    first, second = await enqueue(store, stream_name, [keyed("k", 1), keyed("k", 2)])
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", first, timedelta(0), "poison")
    assert await store.redrive_dead_letters(stream_name, [first]) == 1
    assert await lease_all(store, stream_name, "b") == [second]
    await store.acknowledge(stream_name, "b", [second])
    back = await lease_one(store, stream_name, "b")
    assert (back.event.event_id, back.delivery_attempt, back.event.ordering_key) == (
        first,
        1,
        "k",
    )


async def test_keys_of_different_queues_do_not_meet(store: EventStore, stream_name: str) -> None:
    other_queue = f"{stream_name}-other"
    (mine,) = await enqueue(store, stream_name, [keyed("k")])
    (theirs,) = await enqueue(store, other_queue, [keyed("k")])
    assert await lease_all(store, stream_name) == [mine]
    assert await lease_all(store, other_queue) == [theirs]


# -- deduplication ---------------------------------------------------------------------


async def test_an_id_seen_within_the_window_is_a_duplicate_whatever_became_of_it(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, max_delivery_attempts=1)
    acked, dead, held, queued = await enqueue(store, stream_name, new_events(4))
    await store.dequeue(stream_name, "a", LONG_LEASE, 3)
    await store.acknowledge(stream_name, "a", [acked])
    await store.nack(stream_name, "a", dead, timedelta(0), "bad")
    fresh = uuid.uuid4()
    batch = [acked, fresh, dead, held, queued]
    result = await store.enqueue(stream_name, with_ids(batch))
    assert result == EnqueueResult(tuple(batch), (acked, dead, held, queued))
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.pending_count, meta.in_flight_count) == (5, 2, 1)
    assert meta.dead_letter_count == 1


async def test_a_retried_enqueue_is_never_delivered_twice(
    store: EventStore, stream_name: str
) -> None:
    batch = new_events(3)
    await enqueue(store, stream_name, batch)
    for message in await store.dequeue(stream_name, "a", LONG_LEASE, 10):
        await store.acknowledge(stream_name, "a", [message.event.event_id])
    retried = await store.enqueue(stream_name, batch)
    assert set(retried.duplicate_event_ids) == {e.event_id for e in batch}
    assert await lease_all(store, stream_name, "b") == []


async def test_without_a_window_an_acknowledged_id_may_come_again(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, deduplication_window=timedelta(0))
    (done,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.acknowledge(stream_name, "a", [done])
    assert await enqueue(store, stream_name, with_ids([done])) == [done]
    again = await lease_one(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt, again.event.offset) == (done, 1, 1)
    # Still in the queue: a duplicate, window or not.
    assert (await store.enqueue(stream_name, with_ids([done]))).duplicate_event_ids == (done,)


async def test_an_id_is_forgotten_once_its_window_has_passed(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, deduplication_window=timedelta(seconds=0.3))
    (done,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.acknowledge(stream_name, "a", [done])
    assert (await store.enqueue(stream_name, with_ids([done]))).duplicate_event_ids == (done,)
    await asyncio.sleep(0.4)
    assert await enqueue(store, stream_name, with_ids([done])) == [done]


async def test_retention_forgets_ids_past_their_window(store: EventStore, stream_name: str) -> None:
    await configure(store, stream_name, deduplication_window=timedelta(seconds=0.2))
    await enqueue(store, stream_name, new_events(3))
    await asyncio.sleep(0.3)
    report = await store.enforce_retention()
    assert report.ids_forgotten >= 3
    # Still in the queue, so still duplicates.
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 10)
    assert len(leased) == 3


async def test_the_window_in_force_at_enqueue_decides(store: EventStore, stream_name: str) -> None:
    await configure(store, stream_name, deduplication_window=timedelta(minutes=5))
    (done,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.acknowledge(stream_name, "a", [done])
    await configure(store, stream_name, deduplication_window=timedelta(0))
    assert (await store.enqueue(stream_name, with_ids([done]))).duplicate_event_ids == (done,)


# -- receipts --------------------------------------------------------------------------


async def test_each_delivery_has_its_own_receipt(store: EventStore, stream_name: str) -> None:
    await enqueue(store, stream_name, new_events(2))
    first, other = await store.dequeue(stream_name, "a", SHORT_LEASE, 2)
    again = await lease_again(store, stream_name, "a")
    receipts = {first.receipt, other.receipt, again.receipt}
    assert len(receipts) == 3
    assert first.receipt.event_id == first.event.event_id


async def test_a_stale_receipt_is_refused_while_the_fresh_one_works(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    stale = await lease_one(store, stream_name, "a", SHORT_LEASE)
    fresh = await lease_again(store, stream_name, "a")
    assert fresh.delivery_attempt == 2
    with pytest.raises(MessageNotHeld):
        await store.extend_visibility(stream_name, "a", stale.receipt, LONG_LEASE)
    with pytest.raises(MessageNotHeld):
        await store.nack(stream_name, "a", stale.receipt, timedelta(0), "")
    result = await store.acknowledge(stream_name, "a", [stale.receipt])
    assert result.failed == (AckFailure(event_id, AckFailureReason.NOT_HELD, stale.receipt),)
    until = await store.extend_visibility(stream_name, "a", fresh.receipt, LONG_LEASE)
    assert until > fresh.visible_until
    assert (await store.acknowledge(stream_name, "a", [fresh.receipt])).acknowledged == (event_id,)
    gone = await store.acknowledge(stream_name, "a", [fresh.receipt])
    assert gone.failed == (AckFailure(event_id, AckFailureReason.NOT_FOUND, fresh.receipt),)


async def test_a_receipt_of_another_consumer_holds_nothing(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a")
    result = await store.acknowledge(stream_name, "b", [message.receipt])
    assert result.failed == (AckFailure(event_id, AckFailureReason.NOT_HELD, message.receipt),)


async def test_a_nacked_delivery_receipt_no_longer_acts(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", message.receipt, timedelta(minutes=5), "")
    result = await store.acknowledge(stream_name, "a", [message.receipt])
    assert result.failed == (AckFailure(event_id, AckFailureReason.NOT_HELD, message.receipt),)


# -- release -------------------------------------------------------------------------


async def test_release_gives_deliveries_back_at_once_with_the_attempt_counted(
    store: EventStore, stream_name: str
) -> None:
    first, second = await enqueue(store, stream_name, new_events(2))
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 2)
    stale = leased[0].receipt
    assert await store.release(stream_name, "a", [m.receipt for m in leased]) == 2
    again = await store.dequeue(stream_name, "b", LONG_LEASE, 2)
    assert [(m.event.event_id, m.delivery_attempt) for m in again] == [(first, 2), (second, 2)]
    # A receipt of a delivery that is no longer held releases nothing.
    assert await store.release(stream_name, "a", [stale]) == 0


async def test_release_of_a_last_allowed_delivery_dead_letters_it(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, max_delivery_attempts=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a")
    assert await store.release(stream_name, "a", [message.receipt]) == 1
    (letter,) = await all_dead_letters(store, stream_name)
    assert (letter.event.event_id, letter.reason) == (event_id, RELEASED_REASON)


# -- one look --------------------------------------------------------------------------


async def test_one_look_leases_what_is_visible_and_says_when_to_look_again(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    look = await store.lease_messages(stream_name, "a", timedelta(seconds=2), 10)
    assert ids(tuple(look.found)) == [event_id]
    empty = await store.lease_messages(stream_name, "b", LONG_LEASE, 10)
    assert list(empty.found) == []
    assert empty.next_visible is not None
    assert 0 < empty.next_visible <= 2.5


# -- the queue's age -------------------------------------------------------------------


async def test_the_oldest_message_enqueued_at_is_that_of_the_oldest_left(
    store: EventStore, stream_name: str
) -> None:
    await configure(store, stream_name, max_delivery_attempts=1)
    assert (await store.get_stream_metadata(stream_name)).oldest_message_enqueued_at is None
    dead, held, queued = await enqueue(store, stream_name, new_events(3))
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 2)
    await store.nack(stream_name, "a", dead, timedelta(0), "bad")
    meta = await store.get_stream_metadata(stream_name)
    assert meta.oldest_message_enqueued_at == leased[1].event.timestamp
    await store.acknowledge(stream_name, "a", [held])
    meta = await store.get_stream_metadata(stream_name)
    assert meta.oldest_message_enqueued_at is not None
    assert meta.oldest_message_enqueued_at <= datetime.now(UTC)
    await lease_one(store, stream_name, "a")
    await store.acknowledge(stream_name, "a", [queued])
    assert (await store.get_stream_metadata(stream_name)).oldest_message_enqueued_at is None


async def test_the_queue_table_figures_count_in_flight_messages(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(2))
    await store.dequeue(stream_name, "a", LONG_LEASE, 2)
    stats = await store.queue_table_stats()
    if stats is None:
        return  # a backend without a table
    assert stats.in_flight_by_age[-1] >= 2
    assert list(stats.in_flight_by_age) == sorted(stats.in_flight_by_age)
    assert stats.table_bytes > 0
    assert stats.index_bytes > 0

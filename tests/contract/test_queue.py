"""Ephemeral streams: enqueue, leases, acknowledgements, nacks, dead letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from storage.errors import (
    InvalidPageToken,
    MessageNotFound,
    MessageNotHeld,
    WrongStreamType,
)
from storage.interface import EventStore
from storage.page_tokens import DEAD_LETTERS, encode_page_token, encode_position_token
from storage.records import (
    AckFailure,
    AckFailureReason,
    AckResult,
    DeadLetterPage,
    StreamConfiguration,
    StreamType,
)
from tests.contract.backends import (
    StoreCall,
)
from tests.contract.events import (
    assert_recorded_as_written,
    ids_of,
    new_event,
    new_events,
)
from tests.contract.leases import (
    LONG_LEASE,
    PATIENCE,
    SHORT_LEASE,
    configure_queue,
    enqueue,
    lease_again,
    lease_one,
    wait_for_lease_end,
)
from tests.contract.paging import all_dead_letters

#: Slack for comparing a lease end with the clock (the database reads its own).
CLOCK_SLACK = timedelta(seconds=5)


def near(value: datetime, expected: datetime) -> bool:
    return abs(value - expected) <= CLOCK_SLACK


# -- enqueue and dequeue -------------------------------------------------------------


async def test_enqueue_returns_the_ids_and_makes_an_ephemeral_stream(
    store: EventStore, stream_name: str
) -> None:
    batch = new_events(3)
    assert list(await enqueue(store, stream_name, batch)) == ids_of(batch)
    meta = await store.get_stream_metadata(stream_name)
    assert meta.stream_type == StreamType.EPHEMERAL
    assert meta.length == 3
    config = await store.get_stream_configuration(stream_name)
    assert config.stream_type == StreamType.EPHEMERAL


async def test_dequeue_hands_out_the_oldest_first(store: EventStore, stream_name: str) -> None:
    first, second = new_events(3), new_events(2)
    await enqueue(store, stream_name, first)
    await enqueue(store, stream_name, second)
    leased = [
        *await store.dequeue(stream_name, "a", LONG_LEASE, 2),
        *await store.dequeue(stream_name, "a", LONG_LEASE, 10),
    ]
    assert [m.event.event_id for m in leased] == ids_of(first + second)
    assert [m.event.offset for m in leased] == [0, 1, 2, 3, 4]
    assert all(m.delivery_attempt == 1 for m in leased)


async def test_dequeue_takes_at_most_max_messages(store: EventStore, stream_name: str) -> None:
    await enqueue(store, stream_name, new_events(5))
    assert len(await store.dequeue(stream_name, "a", LONG_LEASE, 1)) == 1
    assert len(await store.dequeue(stream_name, "a", LONG_LEASE, 3)) == 3
    assert len(await store.dequeue(stream_name, "a", LONG_LEASE, 3)) == 1


async def test_an_empty_or_unknown_queue_gives_nothing(store: EventStore, stream_name: str) -> None:
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 10)) == []
    await configure_queue(store, stream_name)
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 10)) == []


async def test_a_message_comes_back_as_it_was_enqueued(store: EventStore, stream_name: str) -> None:
    written = [
        new_event(
            "Json",
            {"k": ["v", 1, None]},
            metadata={"tenant": "t"},
            correlation_id="corr",
            causation_id="cause",
        ),
        new_event("Binary", data=b"\x00\xffraw", content_type="application/octet-stream"),
    ]
    before = datetime.now(UTC)
    await enqueue(store, stream_name, written)
    leased = await store.dequeue(stream_name, "a", LONG_LEASE, 10)
    for position, (message, sent) in enumerate(zip(leased, written, strict=True)):
        assert_recorded_as_written(message.event, sent, stream_name=stream_name, offset=position)
        assert near(message.event.timestamp, before)


# -- leases --------------------------------------------------------------------------


async def test_a_lease_lasts_the_visibility_timeout_asked_for(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", timedelta(minutes=7))
    assert near(message.visible_until, datetime.now(UTC) + timedelta(minutes=7))
    assert message.delivery_attempt == 1


async def test_without_a_visibility_timeout_the_stream_default_applies(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, visibility=timedelta(minutes=3))
    await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", None)
    assert near(message.visible_until, datetime.now(UTC) + timedelta(minutes=3))


async def test_the_default_visibility_timeout_is_thirty_seconds(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", None)
    assert near(message.visible_until, datetime.now(UTC) + timedelta(seconds=30))


async def test_a_leased_message_is_invisible_to_every_consumer(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(3))
    held = await store.dequeue(stream_name, "a", LONG_LEASE, 2)
    rest = await store.dequeue(stream_name, "b", LONG_LEASE, 10)
    assert [m.event.offset for m in rest] == [2]
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 10)) == []
    assert {m.event.event_id for m in held}.isdisjoint(m.event.event_id for m in rest)


async def test_concurrent_consumers_never_hold_the_same_message(
    store: EventStore, stream_name: str
) -> None:
    batch = new_events(40)
    await enqueue(store, stream_name, batch)
    leases = await asyncio.gather(
        *(store.dequeue(stream_name, f"c{i}", LONG_LEASE, 7) for i in range(8))
    )
    taken = [m.event.event_id for lease in leases for m in lease]
    assert len(taken) == len(set(taken)) == 40
    assert set(taken) == set(ids_of(batch))


async def test_an_expired_lease_is_delivered_again_with_the_next_attempt(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    first = await lease_one(store, stream_name, "a", SHORT_LEASE)
    again = await lease_again(store, stream_name, "b")
    assert again.event.event_id == event_id
    assert again.delivery_attempt == 2
    assert again.visible_until > first.visible_until
    assert again.event.offset == first.event.offset


async def test_a_long_poll_returns_as_soon_as_a_lease_runs_out(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a", timedelta(seconds=0.5))
    started = time.monotonic()
    again = await lease_again(store, stream_name, "b")
    assert again.delivery_attempt == 2
    assert time.monotonic() - started < PATIENCE.total_seconds() / 2


# -- long polling --------------------------------------------------------------------


async def test_a_long_poll_returns_when_a_message_is_enqueued(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name)
    poll = asyncio.create_task(store.dequeue(stream_name, "a", LONG_LEASE, 1, PATIENCE))
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = time.monotonic()
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    (message,) = await asyncio.wait_for(poll, PATIENCE.total_seconds())
    assert message.event.event_id == event_id
    assert time.monotonic() - started < PATIENCE.total_seconds() / 2


async def test_a_long_poll_on_a_stream_not_yet_written_returns_on_its_first_enqueue(
    store: EventStore, stream_name: str
) -> None:
    poll = asyncio.create_task(store.dequeue(stream_name, "a", LONG_LEASE, 1, PATIENCE))
    await asyncio.sleep(0.2)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    (message,) = await asyncio.wait_for(poll, PATIENCE.total_seconds())
    assert message.event.event_id == event_id


async def test_a_long_poll_with_nothing_to_give_waits_its_wait_time(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name)
    started = time.monotonic()
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 1, timedelta(seconds=0.3))) == []
    assert 0.25 <= time.monotonic() - started < PATIENCE.total_seconds()


# -- acknowledge ---------------------------------------------------------------------


async def test_acknowledge_deletes_held_messages_for_good(
    store: EventStore, stream_name: str
) -> None:
    ids = list(await enqueue(store, stream_name, new_events(3)))
    leased = await store.dequeue(stream_name, "a", SHORT_LEASE, 2)
    result = await store.acknowledge(stream_name, "a", [m.event.event_id for m in leased])
    assert result == AckResult(tuple(ids[:2]), ())
    await wait_for_lease_end(leased[0])
    rest = await store.dequeue(stream_name, "b", LONG_LEASE, 10)
    assert [m.event.event_id for m in rest] == ids[2:]
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.length, meta.retained_count) == (3, 1)


async def test_acknowledge_reports_each_id_that_failed_and_why(
    store: EventStore, stream_name: str
) -> None:
    mine, theirs, pending = await enqueue(store, stream_name, new_events(3))
    await lease_one(store, stream_name, "a")
    await lease_one(store, stream_name, "b")
    unknown = uuid.uuid4()
    result = await store.acknowledge(stream_name, "a", [unknown, theirs, mine, pending])
    assert result.acknowledged == (mine,)
    assert result.failed == (
        AckFailure(unknown, AckFailureReason.NOT_FOUND),
        AckFailure(theirs, AckFailureReason.NOT_HELD),
        AckFailure(pending, AckFailureReason.NOT_HELD),
    )
    # Failed ids are untouched: the other consumer's ack still works.
    assert (await store.acknowledge(stream_name, "b", [theirs])).acknowledged == (theirs,)


async def test_a_second_acknowledge_finds_nothing(store: EventStore, stream_name: str) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.acknowledge(stream_name, "a", [event_id])
    result = await store.acknowledge(stream_name, "a", [event_id])
    assert result == AckResult((), (AckFailure(event_id, AckFailureReason.NOT_FOUND),))


async def test_acknowledge_on_an_unknown_stream_finds_nothing(
    store: EventStore, stream_name: str
) -> None:
    event_id = uuid.uuid4()
    result = await store.acknowledge(stream_name, "a", [event_id])
    assert result == AckResult((), (AckFailure(event_id, AckFailureReason.NOT_FOUND),))


async def test_a_late_acknowledge_succeeds_while_nobody_else_dequeued(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", SHORT_LEASE)
    await wait_for_lease_end(message)
    assert (await store.acknowledge(stream_name, "a", [event_id])).acknowledged == (event_id,)
    assert list(await store.dequeue(stream_name, "b", LONG_LEASE, 1)) == []


async def test_a_late_acknowledge_after_another_consumer_dequeued_is_not_held(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a", SHORT_LEASE)
    await lease_again(store, stream_name, "b")
    result = await store.acknowledge(stream_name, "a", [event_id])
    assert result.failed == (AckFailure(event_id, AckFailureReason.NOT_HELD),)
    # The message is untouched: its holder still acknowledges it.
    assert (await store.acknowledge(stream_name, "b", [event_id])).acknowledged == (event_id,)


async def test_a_late_acknowledge_of_an_expired_last_lease_succeeds_until_it_is_buried(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    done, dead = await enqueue(store, stream_name, new_events(2))
    leased = await store.dequeue(stream_name, "a", SHORT_LEASE, 2)
    await wait_for_lease_end(leased[-1])
    # Nobody else can have dequeued it: the consumer did finish with it.
    assert (await store.acknowledge(stream_name, "a", [done])).acknowledged == (done,)
    # Once a listing has moved the other to the dead-letter queue, it is gone.
    assert [d.event.event_id for d in await all_dead_letters(store, stream_name)] == [dead]
    result = await store.acknowledge(stream_name, "a", [dead])
    assert result.failed == (AckFailure(dead, AckFailureReason.NOT_FOUND),)
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.retained_count, meta.dead_letter_count) == (0, 1)


async def test_the_same_consumer_holds_its_redelivery(store: EventStore, stream_name: str) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a", SHORT_LEASE)
    again = await lease_again(store, stream_name, "a")
    assert again.delivery_attempt == 2
    assert (await store.acknowledge(stream_name, "a", [event_id])).acknowledged == (event_id,)


# -- nack ----------------------------------------------------------------------------


async def test_a_nack_without_delay_makes_the_message_visible_at_once(
    store: EventStore, stream_name: str
) -> None:
    first, second = await enqueue(store, stream_name, new_events(2))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", first, timedelta(0), "retry")
    leased = await store.dequeue(stream_name, "b", LONG_LEASE, 10)
    # Oldest first: the nacked message keeps its place at the head.
    assert [m.event.event_id for m in leased] == [first, second]
    assert [m.delivery_attempt for m in leased] == [2, 1]


async def test_a_nack_with_a_delay_hides_the_message_until_then(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    nacked_at = time.monotonic()
    await store.nack(stream_name, "a", event_id, timedelta(seconds=1), "later")
    assert list(await store.dequeue(stream_name, "b", LONG_LEASE, 1)) == []
    again = await lease_again(store, stream_name, "b")
    assert time.monotonic() - nacked_at >= 0.9
    assert (again.event.event_id, again.delivery_attempt) == (event_id, 2)


async def test_a_nacked_message_is_no_longer_held(store: EventStore, stream_name: str) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(minutes=5), "")
    result = await store.acknowledge(stream_name, "a", [event_id])
    assert result.failed == (AckFailure(event_id, AckFailureReason.NOT_HELD),)
    with pytest.raises(MessageNotHeld):
        await store.nack(stream_name, "a", event_id, timedelta(0), "")


async def test_nack_of_an_unknown_message_is_not_found(store: EventStore, stream_name: str) -> None:
    await enqueue(store, stream_name, new_events(1))
    missing = uuid.uuid4()
    with pytest.raises(MessageNotFound) as caught:
        await store.nack(stream_name, "a", missing, timedelta(0), "")
    assert (caught.value.stream_name, caught.value.event_id) == (stream_name, missing)


async def test_nack_by_another_consumer_is_not_held(store: EventStore, stream_name: str) -> None:
    held, pending = await enqueue(store, stream_name, new_events(2))
    await lease_one(store, stream_name, "a")
    for event_id in (held, pending):
        with pytest.raises(MessageNotHeld) as caught:
            await store.nack(stream_name, "b", event_id, timedelta(0), "")
        assert (caught.value.event_id, caught.value.consumer_id) == (event_id, "b")
    # The held one stays with its consumer; the pending one is free to lease.
    (free,) = await store.dequeue(stream_name, "b", LONG_LEASE, 1)
    assert free.event.event_id == pending


# -- extend visibility ---------------------------------------------------------------


async def test_extend_visibility_moves_the_lease_end_from_now(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", SHORT_LEASE)
    until = await store.extend_visibility(stream_name, "a", event_id, timedelta(minutes=10))
    assert near(until, datetime.now(UTC) + timedelta(minutes=10))
    await wait_for_lease_end(message, margin=0.2)
    assert list(await store.dequeue(stream_name, "b", LONG_LEASE, 1)) == []
    assert (await store.acknowledge(stream_name, "a", [event_id])).acknowledged == (event_id,)


async def test_extend_visibility_can_shorten_a_lease(store: EventStore, stream_name: str) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.extend_visibility(stream_name, "a", event_id, SHORT_LEASE)
    again = await lease_again(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (event_id, 2)


async def test_extend_visibility_of_an_unknown_message_is_not_found(
    store: EventStore, stream_name: str
) -> None:
    await enqueue(store, stream_name, new_events(1))
    with pytest.raises(MessageNotFound):
        await store.extend_visibility(stream_name, "a", uuid.uuid4(), LONG_LEASE)
    with pytest.raises(MessageNotFound):
        await store.extend_visibility(f"{stream_name}-none", "a", uuid.uuid4(), LONG_LEASE)


async def test_extend_visibility_by_another_consumer_is_not_held(
    store: EventStore, stream_name: str
) -> None:
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    with pytest.raises(MessageNotHeld):
        await store.extend_visibility(stream_name, "b", event_id, LONG_LEASE)


# -- dead letters --------------------------------------------------------------------


async def test_a_message_whose_last_lease_expires_is_dead_lettered(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=2)
    written = new_event("Poison", {"p": 1}, metadata={"m": "1"}, correlation_id="c")
    await enqueue(store, stream_name, [written])
    await lease_one(store, stream_name, "a", SHORT_LEASE)
    last = await lease_again(store, stream_name, "a", SHORT_LEASE)
    assert last.delivery_attempt == 2
    await wait_for_lease_end(last)
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 1)) == []
    (letter,) = await all_dead_letters(store, stream_name)
    assert letter.reason == "visibility timeout expired"
    assert letter.delivery_attempts == 2
    assert_recorded_as_written(letter.event, written, stream_name=stream_name, offset=0)
    assert near(letter.dead_lettered_at, datetime.now(UTC))


async def test_an_expired_last_lease_counts_as_dead_letter_before_anyone_looks(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", SHORT_LEASE)
    await wait_for_lease_end(message)
    meta = await store.get_stream_metadata(stream_name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 1)


async def test_a_nack_on_the_last_attempt_dead_letters_with_its_reason(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "cannot parse")
    assert list(await store.dequeue(stream_name, "a", LONG_LEASE, 1)) == []
    (letter,) = await all_dead_letters(store, stream_name)
    assert (letter.event.event_id, letter.reason, letter.delivery_attempts) == (
        event_id,
        "cannot parse",
        1,
    )


async def test_a_nack_without_reason_dead_letters_as_nacked(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=2)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "first try")
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "")
    (letter,) = await all_dead_letters(store, stream_name)
    assert (letter.reason, letter.delivery_attempts) == ("nacked", 2)


async def test_nack_and_extend_of_an_expired_last_lease_find_it_dead(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    first, second = await enqueue(store, stream_name, new_events(2))
    leased = await store.dequeue(stream_name, "a", SHORT_LEASE, 2)
    await wait_for_lease_end(leased[-1])
    with pytest.raises(MessageNotFound):
        await store.nack(stream_name, "a", first, timedelta(0), "too late")
    with pytest.raises(MessageNotFound):
        await store.extend_visibility(stream_name, "a", second, LONG_LEASE)
    letters = await all_dead_letters(store, stream_name)
    assert sorted(letter.event.offset for letter in letters) == [0, 1]
    assert {letter.reason for letter in letters} == {"visibility timeout expired"}


async def test_dead_letters_list_in_pages_in_the_order_they_died(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    ids = list(await enqueue(store, stream_name, new_events(5)))
    await store.dequeue(stream_name, "a", LONG_LEASE, 5)
    for event_id in reversed(ids):
        await store.nack(stream_name, "a", event_id, timedelta(0), f"bad {event_id}")
    first = await store.list_dead_letters(stream_name, 2, "")
    assert len(first.dead_letters) == 2
    assert first.next_page_token
    second = await store.list_dead_letters(stream_name, 2, first.next_page_token)
    assert len(second.dead_letters) == 2
    assert second.next_page_token
    last = await store.list_dead_letters(stream_name, 2, second.next_page_token)
    assert len(last.dead_letters) == 1
    assert last.next_page_token == ""
    listed = [
        d.event.event_id for d in first.dead_letters + second.dead_letters + last.dead_letters
    ]
    assert listed == list(reversed(ids))
    assert [d.reason for d in await all_dead_letters(store, stream_name)] == [
        f"bad {event_id}" for event_id in reversed(ids)
    ]
    exact = await store.list_dead_letters(stream_name, 5, "")
    assert (len(exact.dead_letters), exact.next_page_token) == (5, "")


async def test_dead_letters_of_an_unknown_or_clean_queue_are_none(
    store: EventStore, stream_name: str
) -> None:
    page = await store.list_dead_letters(stream_name, 10, "")
    assert (page.dead_letters, page.next_page_token) == ((), "")
    await enqueue(store, stream_name, new_events(1))
    assert await all_dead_letters(store, stream_name) == []


@pytest.mark.parametrize("token", ["garbage", "!!", "c3RyZWFtcy1hZnRlcjp4"])
async def test_a_dead_letter_page_token_not_issued_is_refused(
    store: EventStore, stream_name: str, token: str
) -> None:
    await configure_queue(store, stream_name)
    with pytest.raises(InvalidPageToken):
        await store.list_dead_letters(stream_name, 10, token)


async def test_a_dead_letter_token_with_a_non_ascii_digit_is_refused(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name)
    with pytest.raises(InvalidPageToken):
        await store.list_dead_letters(stream_name, 10, encode_page_token(DEAD_LETTERS, "\u00b2"))


async def test_a_dead_letter_token_beyond_every_position_is_refused_or_finds_nothing(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "bad")
    token = encode_position_token(DEAD_LETTERS, 2**63)
    try:
        page = await store.list_dead_letters(stream_name, 10, token)
    except InvalidPageToken:
        return
    assert page == DeadLetterPage((), "")


async def test_redrive_of_all_puts_them_back_at_the_end_with_attempts_reset(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    dead = list(await enqueue(store, stream_name, new_events(2)))
    await store.dequeue(stream_name, "a", LONG_LEASE, 2)
    for event_id in dead:
        await store.nack(stream_name, "a", event_id, timedelta(0), "bad")
    (waiting,) = await enqueue(store, stream_name, new_events(1))
    assert await store.redrive_dead_letters(stream_name, []) == 2
    assert await all_dead_letters(store, stream_name) == []
    leased = await store.dequeue(stream_name, "b", LONG_LEASE, 10)
    assert [m.event.event_id for m in leased] == [waiting, *dead]
    assert [m.delivery_attempt for m in leased] == [1, 1, 1]
    offsets = [m.event.offset for m in leased]
    # Back at the end of the queue: new positions, after the one still waiting.
    assert offsets[0] < offsets[1] < offsets[2]


async def test_redrive_of_some_moves_only_those(store: EventStore, stream_name: str) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    ids = list(await enqueue(store, stream_name, new_events(3)))
    await store.dequeue(stream_name, "a", LONG_LEASE, 3)
    for event_id in ids:
        await store.nack(stream_name, "a", event_id, timedelta(0), "bad")
    chosen = [ids[2], ids[0]]
    assert await store.redrive_dead_letters(stream_name, [*chosen, uuid.uuid4()]) == 2
    assert [d.event.event_id for d in await all_dead_letters(store, stream_name)] == [ids[1]]
    leased = await store.dequeue(stream_name, "b", LONG_LEASE, 10)
    assert {m.event.event_id for m in leased} == set(chosen)
    assert await store.redrive_dead_letters(stream_name, [ids[0]]) == 0


async def test_redrive_includes_expired_last_leases(store: EventStore, stream_name: str) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    message = await lease_one(store, stream_name, "a", SHORT_LEASE)
    await wait_for_lease_end(message)
    assert await store.redrive_dead_letters(stream_name, []) == 1
    again = await lease_one(store, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (event_id, 1)


async def test_a_redriven_message_can_die_again(store: EventStore, stream_name: str) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    (event_id,) = await enqueue(store, stream_name, new_events(1))
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "first")
    await store.redrive_dead_letters(stream_name, [event_id])
    await lease_one(store, stream_name, "a")
    await store.nack(stream_name, "a", event_id, timedelta(0), "second")
    (letter,) = await all_dead_letters(store, stream_name)
    assert (letter.event.event_id, letter.reason, letter.delivery_attempts) == (
        event_id,
        "second",
        1,
    )


async def test_redrive_of_an_unknown_queue_moves_nothing(
    store: EventStore, stream_name: str
) -> None:
    assert await store.redrive_dead_letters(stream_name, []) == 0


# -- metadata and types --------------------------------------------------------------


async def test_queue_metadata_counts_pending_in_flight_and_dead(
    store: EventStore, stream_name: str
) -> None:
    await configure_queue(store, stream_name, max_attempts=1)
    ids = list(await enqueue(store, stream_name, new_events(6)))
    await store.dequeue(stream_name, "a", LONG_LEASE, 3)
    await store.acknowledge(stream_name, "a", [ids[0]])
    await store.nack(stream_name, "a", ids[1], timedelta(0), "bad")
    meta = await store.get_stream_metadata(stream_name)
    assert meta.stream_type == StreamType.EPHEMERAL
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (3, 1, 1)
    assert (meta.length, meta.retained_count) == (6, 4)
    assert (meta.oldest_offset, meta.newest_offset) == (2, 5)
    assert meta.oldest_event_timestamp is not None
    assert meta.newest_event_timestamp is not None
    assert meta.oldest_event_timestamp <= meta.newest_event_timestamp


async def test_metadata_of_an_empty_configured_queue(store: EventStore, stream_name: str) -> None:
    await store.configure_stream(stream_name, StreamConfiguration(StreamType.EPHEMERAL))
    meta = await store.get_stream_metadata(stream_name)
    assert meta.stream_type == StreamType.EPHEMERAL
    assert (meta.length, meta.retained_count, meta.oldest_offset, meta.newest_offset) == (
        0,
        0,
        -1,
        -1,
    )
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, n: s.enqueue(n, new_events(1)), id="enqueue"),
        pytest.param(lambda s, n: s.dequeue(n, "a", LONG_LEASE, 1), id="dequeue"),
        pytest.param(lambda s, n: s.acknowledge(n, "a", [uuid.uuid4()]), id="acknowledge"),
        pytest.param(lambda s, n: s.nack(n, "a", uuid.uuid4(), timedelta(0), ""), id="nack"),
        pytest.param(
            lambda s, n: s.extend_visibility(n, "a", uuid.uuid4(), LONG_LEASE),
            id="extend_visibility",
        ),
        pytest.param(lambda s, n: s.list_dead_letters(n, 10, ""), id="list_dead_letters"),
        pytest.param(lambda s, n: s.redrive_dead_letters(n, []), id="redrive_dead_letters"),
    ],
)
async def test_queue_calls_on_a_log_are_the_wrong_type(
    store: EventStore, stream_name: str, call: StoreCall
) -> None:
    await store.append_to_stream(stream_name, new_events(1))
    with pytest.raises(WrongStreamType) as caught:
        await call(store, stream_name)
    assert (caught.value.actual, caught.value.wanted) == (
        StreamType.PERSISTENT,
        StreamType.EPHEMERAL,
    )
    assert await store.get_stream_length(stream_name) == 1

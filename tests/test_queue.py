"""Ephemeral streams (work queues) through the real server, on both backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from storage.receipts import Receipt
from tests.conftest import RunningServer
from tests.support import (
    Stub,
    ack,
    configure_queue,
    dead_letters,
    dequeue,
    enqueue,
    enqueue_ids,
    epoch,
    error_info,
    event,
    events,
    extend,
    ids_of,
    lease_ended,
    metadata,
    nack,
    redrive,
    seconds,
    wait_until,
)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- enqueue and dequeue -----------------------------------------------------------


async def test_enqueue_creates_an_ephemeral_stream_and_keeps_given_ids(
    stub: Stub, stream_name: str
) -> None:
    given = str(uuid.uuid4())
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=stream_name, events=[event(event_id=given), event()])
    )
    assert reply.event_ids[0] == given
    assert uuid.UUID(reply.event_ids[1])
    meta = await metadata(stub, stream_name)
    assert meta.stream_type == pb.STREAM_TYPE_EPHEMERAL
    assert meta.length == 2


async def test_dequeue_hands_out_oldest_first_on_first_delivery(
    stub: Stub, stream_name: str
) -> None:
    ids = await enqueue(stub, stream_name, 5)
    first = await dequeue(stub, stream_name, "a", max_messages=3)
    second = await dequeue(stub, stream_name, "a", max_messages=3)
    assert ids_of(first) + ids_of(second) == ids
    assert [m.event.offset for m in first + second] == [0, 1, 2, 3, 4]
    assert all(m.delivery_attempt == 1 for m in first + second)
    assert all(m.event.stream_name == stream_name for m in first)


async def test_message_content_comes_back_as_enqueued(stub: Stub, stream_name: str) -> None:
    raw = pb.EventData(
        event_type="Binary",
        data=b"\x00\xffpayload",
        content_type="application/octet-stream",
        metadata={"k": "v"},
        correlation_id="corr",
        causation_id="cause",
    )
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=[raw]))
    (message,) = await dequeue(stub, stream_name, "a")
    got = message.event
    assert (got.event_type, got.data, got.content_type) == (
        "Binary",
        b"\x00\xffpayload",
        "application/octet-stream",
    )
    assert dict(got.metadata) == {"k": "v"}
    assert (got.correlation_id, got.causation_id) == ("corr", "cause")
    assert got.timestamp.seconds > 0


async def test_enqueue_of_an_id_already_in_the_queue_is_a_duplicate(
    stub: Stub, stream_name: str
) -> None:
    (existing,) = await enqueue(stub, stream_name)
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=stream_name, events=[event(), event(event_id=existing)])
    )
    assert reply.event_ids[1] == existing
    assert list(reply.duplicate_event_ids) == [existing]
    # The other message went in; the duplicate took no position.
    assert (await metadata(stub, stream_name)).length == 2
    assert ids_of(await dequeue(stub, stream_name, "a")) == [existing, reply.event_ids[0]]


async def test_enqueue_of_a_dead_lettered_or_acknowledged_id_is_a_duplicate(
    stub: Stub, stream_name: str
) -> None:
    await configure_queue(stub, stream_name, max_attempts=1)
    dead, done = await enqueue(stub, stream_name, 2)
    await dequeue(stub, stream_name, "a")
    await nack(stub, stream_name, "a", dead, reason="bad")
    await ack(stub, stream_name, "a", [done])
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=stream_name, events=[event(event_id=i) for i in (dead, done)])
    )
    assert list(reply.duplicate_event_ids) == [dead, done]
    meta = await metadata(stub, stream_name)
    assert (meta.length, meta.pending_count, meta.dead_letter_count) == (2, 0, 1)


async def test_max_messages_zero_means_one_and_large_values_are_capped(
    stub: Stub, stream_name: str
) -> None:
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=events(105)))
    assert len(await dequeue(stub, stream_name, "a", max_messages=0)) == 1
    assert len(await dequeue(stub, stream_name, "a", max_messages=5000)) == 100


async def test_dequeue_of_an_unknown_stream_is_empty(stub: Stub, stream_name: str) -> None:
    assert await dequeue(stub, stream_name, "a") == []


# -- visibility and leases ---------------------------------------------------------


async def test_a_dequeued_message_is_invisible_to_other_consumers(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    assert ids_of(await dequeue(stub, stream_name, "a")) == [only]
    assert await dequeue(stub, stream_name, "b") == []
    assert await dequeue(stub, stream_name, "a") == []


async def test_an_expired_lease_redelivers_with_the_next_attempt(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    (first,) = await dequeue(stub, stream_name, "a", visibility=1)
    (second,) = await dequeue(stub, stream_name, "b", visibility=30, wait=10)
    assert second.event.event_id == only
    assert second.delivery_attempt == first.delivery_attempt + 1 == 2
    # Not before the first lease ended: the second lease started at or after it.
    second_start = second.visible_until.ToDatetime() - seconds(30).ToTimedelta()
    assert second_start >= first.visible_until.ToDatetime()


async def test_two_consumers_never_hold_the_same_message(stub: Stub, stream_name: str) -> None:
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=events(60)))

    async def consume(consumer: str) -> list[str]:
        got: list[str] = []
        while batch := await dequeue(stub, stream_name, consumer, max_messages=7):
            got += ids_of(batch)
        return got

    first, second = await asyncio.gather(consume("a"), consume("b"))
    assert not set(first) & set(second)
    assert len(first) + len(second) == len(set(first) | set(second)) == 60


async def test_ack_by_another_consumer_is_not_held_and_leaves_the_message(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    reply = await ack(stub, stream_name, "b", [only])
    assert list(reply.acknowledged) == []
    assert [(f.event_id, f.reason) for f in reply.failed] == [(only, "NOT_HELD")]
    assert (await metadata(stub, stream_name)).in_flight_count == 1
    assert list((await ack(stub, stream_name, "a", [only])).acknowledged) == [only]


async def test_ack_deletes_held_messages_and_reports_unknown_ids(
    stub: Stub, stream_name: str
) -> None:
    ids = await enqueue(stub, stream_name, 3)
    never_delivered = ids[2]
    await dequeue(stub, stream_name, "a", max_messages=2)
    unknown = str(uuid.uuid4())
    reply = await ack(stub, stream_name, "a", [ids[0], unknown, ids[1], never_delivered])
    assert list(reply.acknowledged) == ids[:2]
    assert {(f.event_id, f.reason) for f in reply.failed} == {
        (unknown, "NOT_FOUND"),
        (never_delivered, "NOT_HELD"),
    }
    # Acknowledged means gone: a second ack finds nothing.
    again = await ack(stub, stream_name, "a", [ids[0]])
    assert [f.reason for f in again.failed] == ["NOT_FOUND"]
    assert (await metadata(stub, stream_name)).retained_count == 1


async def test_a_late_ack_succeeds_when_nobody_else_took_the_message(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    (message,) = await dequeue(stub, stream_name, "a", visibility=1)
    await wait_until(lambda: (time.time() - 0.2) > epoch(message.visible_until))
    assert (await metadata(stub, stream_name)).in_flight_count == 0
    assert list((await ack(stub, stream_name, "a", [only])).acknowledged) == [only]
    assert await dequeue(stub, stream_name, "b") == []


async def test_a_consumer_whose_lease_went_to_another_cannot_ack(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a", visibility=1)
    assert ids_of(await dequeue(stub, stream_name, "b", wait=10)) == [only]
    reply = await ack(stub, stream_name, "a", [only])
    assert [(f.event_id, f.reason) for f in reply.failed] == [(only, "NOT_HELD")]
    assert list((await ack(stub, stream_name, "b", [only])).acknowledged) == [only]


async def test_extend_visibility_keeps_the_message_hidden_past_its_first_lease(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    (message,) = await dequeue(stub, stream_name, "a", visibility=1)
    reply = await stub.ExtendVisibility(
        pb.ExtendVisibilityRequest(
            stream_name=stream_name,
            consumer_id="a",
            event_id=only,
            visibility_timeout=seconds(60),
        )
    )
    assert epoch(reply.visible_until) >= epoch(message.visible_until) + 50
    await wait_until(lambda: (time.time() - 0.5) > epoch(message.visible_until))
    assert await dequeue(stub, stream_name, "b") == []
    assert (await metadata(stub, stream_name)).in_flight_count == 1


async def test_nack_and_extend_need_the_holder(stub: Stub, stream_name: str) -> None:
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    calls: list[Callable[[str, str], Awaitable[Any]]] = [
        lambda consumer, eid: nack(stub, stream_name, consumer, eid),
        lambda consumer, eid: stub.ExtendVisibility(
            pb.ExtendVisibilityRequest(
                stream_name=stream_name,
                consumer_id=consumer,
                event_id=eid,
                visibility_timeout=seconds(5),
            )
        ),
    ]
    for call in calls:
        error = await rpc_error(call("b", only))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'b'" in (error.details() or "")
        error = await rpc_error(call("a", str(uuid.uuid4())))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await metadata(stub, stream_name)).in_flight_count == 1


async def test_an_old_lease_does_not_free_the_same_id_enqueued_again_after_its_ack(
    stub: Stub, stream_name: str
) -> None:
    # Ids are remembered only while in the queue.
    await configure_queue(stub, stream_name, dedup_window=0)
    given = str(uuid.uuid4())
    await enqueue_ids(stub, stream_name, [given])
    (first,) = await dequeue(stub, stream_name, "a", visibility=0.2)
    assert list((await ack(stub, stream_name, "a", [given])).acknowledged) == [given]
    await enqueue_ids(stub, stream_name, [given])
    (second,) = await dequeue(stub, stream_name, "b", visibility=30)
    assert (second.event.event_id, second.delivery_attempt) == (given, 1)
    # The acknowledged incarnation's lease runs out; b still holds the new one.
    await lease_ended(first)
    assert await dequeue(stub, stream_name, "c") == []
    assert (await metadata(stub, stream_name)).in_flight_count == 1
    assert list((await ack(stub, stream_name, "b", [given])).acknowledged) == [given]


async def test_an_old_lease_does_not_free_a_redriven_message(stub: Stub, stream_name: str) -> None:
    await configure_queue(stub, stream_name, max_attempts=1)
    (only,) = await enqueue(stub, stream_name)
    (first,) = await dequeue(stub, stream_name, "a", visibility=0.2)
    await nack(stub, stream_name, "a", only, reason="bad")
    assert await redrive(stub, stream_name) == 1
    (second,) = await dequeue(stub, stream_name, "b", visibility=30)
    assert (second.event.event_id, second.delivery_attempt) == (only, 1)
    await lease_ended(first)
    assert await dequeue(stub, stream_name, "c") == []
    assert (await metadata(stub, stream_name)).in_flight_count == 1


# -- nack --------------------------------------------------------------------------


async def test_nack_without_delay_makes_the_message_visible_at_once(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    await nack(stub, stream_name, "a", only)
    (again,) = await dequeue(stub, stream_name, "b")
    assert (again.event.event_id, again.delivery_attempt) == (only, 2)
    # Given back: the nacking consumer no longer holds it.
    reply = await ack(stub, stream_name, "a", [only])
    assert [f.reason for f in reply.failed] == ["NOT_HELD"]


async def test_nack_with_delay_hides_the_message_until_the_delay_has_passed(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    nacked_at = time.monotonic()
    await nack(stub, stream_name, "a", only, delay=1.5)
    assert await dequeue(stub, stream_name, "b") == []
    meta = await metadata(stub, stream_name)
    assert (meta.pending_count, meta.in_flight_count) == (1, 0)
    (again,) = await dequeue(stub, stream_name, "b", wait=10)
    assert time.monotonic() - nacked_at >= 1.4
    assert (again.event.event_id, again.delivery_attempt) == (only, 2)


# -- dead letters ------------------------------------------------------------------


async def test_a_message_nacked_on_its_last_attempt_is_dead_lettered_with_the_reason(
    stub: Stub, stream_name: str
) -> None:
    await configure_queue(stub, stream_name, max_attempts=2)
    (only,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    await nack(stub, stream_name, "a", only, reason="first failure")
    assert await dead_letters(stub, stream_name) == []
    (second,) = await dequeue(stub, stream_name, "a")
    assert second.delivery_attempt == 2
    await nack(stub, stream_name, "a", only, reason="boom")
    (letter,) = await dead_letters(stub, stream_name)
    assert letter.event.event_id == only
    assert (letter.delivery_attempts, letter.reason) == (2, "boom")
    assert letter.dead_lettered_at.seconds > 0
    assert await dequeue(stub, stream_name, "b") == []


async def test_a_lease_expiring_on_the_last_attempt_dead_letters_the_message(
    stub: Stub, stream_name: str
) -> None:
    await configure_queue(stub, stream_name, max_attempts=2)
    (first_id,) = await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a", visibility=1)
    (again,) = await dequeue(stub, stream_name, "a", visibility=1, wait=10)
    assert (again.event.event_id, again.delivery_attempt) == (first_id, 2)
    # After the second lease ends the message is never handed out again.
    await wait_until(lambda: (time.time() - 0.2) > epoch(again.visible_until))
    (second_id,) = await enqueue(stub, stream_name)
    later = await dequeue(stub, stream_name, "b", max_messages=10)
    assert ids_of(later) == [second_id]
    (letter,) = await dead_letters(stub, stream_name)
    assert letter.event.event_id == first_id
    assert (letter.delivery_attempts, letter.reason) == (2, "visibility timeout expired")


async def _final_lease_ran_out(stub: Stub, name: str) -> str:
    """A message whose only allowed delivery (to "a") has run out: a dead letter."""
    await configure_queue(stub, name, max_attempts=1)
    (only,) = await enqueue(stub, name)
    (message,) = await dequeue(stub, name, "a", visibility=0.2)
    await lease_ended(message)
    return only


async def _assert_dead_lettered_on_expiry(stub: Stub, name: str, event_id: str) -> None:
    meta = await metadata(stub, name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 1)
    (letter,) = await dead_letters(stub, name)
    assert letter.event.event_id == event_id
    assert (letter.delivery_attempts, letter.reason) == (1, "visibility timeout expired")
    assert await dequeue(stub, name, "b") == []


async def test_extend_after_the_final_lease_ran_out_is_not_found(
    stub: Stub, stream_name: str
) -> None:
    only = await _final_lease_ran_out(stub, stream_name)
    error = await rpc_error(extend(stub, stream_name, "a", only, 30))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await _assert_dead_lettered_on_expiry(stub, stream_name, only)


async def test_nack_after_the_final_lease_ran_out_is_not_found_and_keeps_the_expiry_reason(
    stub: Stub, stream_name: str
) -> None:
    only = await _final_lease_ran_out(stub, stream_name)
    error = await rpc_error(nack(stub, stream_name, "a", only, reason="boom"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await _assert_dead_lettered_on_expiry(stub, stream_name, only)
    # Not held by anyone else either: the same answer for another consumer.
    error = await rpc_error(nack(stub, stream_name, "b", only))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_late_ack_of_the_final_delivery_succeeds_when_nobody_else_took_it(
    stub: Stub, stream_name: str
) -> None:
    only = await _final_lease_ran_out(stub, stream_name)
    assert list((await ack(stub, stream_name, "a", [only])).acknowledged) == [only]
    meta = await metadata(stub, stream_name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)
    assert await dead_letters(stub, stream_name) == []


async def test_dead_letters_are_listed_oldest_first_in_pages(stub: Stub, stream_name: str) -> None:
    await configure_queue(stub, stream_name, max_attempts=1)
    ids = await enqueue(stub, stream_name, 5)
    for message in await dequeue(stub, stream_name, "a"):
        await nack(stub, stream_name, "a", message.event.event_id, reason="bad")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await stub.ListDeadLetters(
            pb.ListDeadLettersRequest(stream_name=stream_name, max_count=2, page_token=token)
        )
        seen += [d.event.event_id for d in reply.dead_letters]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == ids
    assert pages == 3
    error = await rpc_error(
        stub.ListDeadLetters(
            pb.ListDeadLettersRequest(stream_name=stream_name, page_token="not-a-token")
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _dead_lettered_queue(stub: Stub, name: str, count: int) -> list[str]:
    await configure_queue(stub, name, max_attempts=1)
    ids = await enqueue(stub, name, count)
    for message in await dequeue(stub, name, "a", max_messages=count):
        await nack(stub, name, "a", message.event.event_id, reason="bad")
    assert len(await dead_letters(stub, name)) == count
    return ids


async def test_redrive_of_some_dead_letters_puts_them_back_with_attempts_reset(
    stub: Stub, stream_name: str
) -> None:
    ids = await _dead_lettered_queue(stub, stream_name, 3)
    reply = await stub.RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(stream_name=stream_name, event_ids=[ids[2], ids[0]])
    )
    assert reply.redriven_count == 2
    assert [d.event.event_id for d in await dead_letters(stub, stream_name)] == [ids[1]]
    back = await dequeue(stub, stream_name, "b")
    # Back at the end of the queue, in dead-letter order, first delivery again.
    assert ids_of(back) == [ids[0], ids[2]]
    assert [m.delivery_attempt for m in back] == [1, 1]
    assert all(m.event.offset >= 3 for m in back)


async def test_redrive_of_all_dead_letters_empties_the_dead_letter_queue(
    stub: Stub, stream_name: str
) -> None:
    ids = await _dead_lettered_queue(stub, stream_name, 3)
    reply = await stub.RedriveDeadLetters(pb.RedriveDeadLettersRequest(stream_name=stream_name))
    assert reply.redriven_count == 3
    assert await dead_letters(stub, stream_name) == []
    back = await dequeue(stub, stream_name, "b")
    assert ids_of(back) == ids
    assert (await metadata(stub, stream_name)).dead_letter_count == 0


# -- long polling ------------------------------------------------------------------


async def test_a_long_poll_is_woken_by_the_enqueue(
    quiet_server: RunningServer, stream_name: str
) -> None:
    store, stub = quiet_server.store, quiet_server.stub
    poll = asyncio.create_task(dequeue(stub, stream_name, "a", wait=20))
    await wait_until(lambda: stream_name in store.signals.waited())
    assert not poll.done()
    (only,) = await enqueue(stub, stream_name)
    # Well within the wait: nothing but the enqueue's wake-up could end it.
    messages = await asyncio.wait_for(poll, timeout=15)
    assert ids_of(messages) == [only]


async def test_a_long_poll_returns_empty_when_its_wait_time_ends(
    stub: Stub, stream_name: str
) -> None:
    await enqueue(stub, stream_name)
    await dequeue(stub, stream_name, "a")
    started = time.monotonic()
    assert await dequeue(stub, stream_name, "b", wait=0.5) == []
    assert time.monotonic() - started >= 0.45


# -- stream types ------------------------------------------------------------------


def _queue_calls(stub: Stub, name: str) -> dict[str, Awaitable[Any]]:
    some_id = str(uuid.uuid4())
    return {
        "Enqueue": stub.Enqueue(pb.EnqueueRequest(stream_name=name, events=events(1))),
        "Dequeue": stub.Dequeue(pb.DequeueRequest(stream_name=name, consumer_id="a")),
        "Acknowledge": stub.Acknowledge(
            pb.AcknowledgeRequest(stream_name=name, consumer_id="a", event_ids=[some_id])
        ),
        "Nack": stub.Nack(pb.NackRequest(stream_name=name, consumer_id="a", event_id=some_id)),
        "ExtendVisibility": stub.ExtendVisibility(
            pb.ExtendVisibilityRequest(
                stream_name=name,
                consumer_id="a",
                event_id=some_id,
                visibility_timeout=seconds(5),
            )
        ),
        "ListDeadLetters": stub.ListDeadLetters(pb.ListDeadLettersRequest(stream_name=name)),
        "RedriveDeadLetters": stub.RedriveDeadLetters(
            pb.RedriveDeadLettersRequest(stream_name=name)
        ),
    }


async def test_queue_rpcs_on_a_persistent_stream_are_refused_naming_its_type(
    stub: Stub, stream_name: str
) -> None:
    await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=stream_name, events=events(1)))
    for rpc, call in _queue_calls(stub, stream_name).items():
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "is persistent" in (error.details() or ""), rpc
    assert (await metadata(stub, stream_name)).length == 1


async def test_log_rpcs_on_a_queue_are_refused_naming_its_type(
    stub: Stub, stream_name: str
) -> None:
    await enqueue(stub, stream_name)
    calls = {
        "AppendToStream": stub.AppendToStream(
            pb.AppendToStreamRequest(stream_name=stream_name, events=events(1))
        ),
        "ReadStream": stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name)),
    }
    for rpc, call in calls.items():
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "is ephemeral" in (error.details() or ""), rpc
    assert (await metadata(stub, stream_name)).length == 1


# -- invalid arguments -------------------------------------------------------------

_ID = "6b8c1a52-7a4e-4c8b-9a51-1d0f2b3c4d5e"
_LONG = "x" * 201


def _dequeue(**fields: Any) -> tuple[str, Any]:
    return "Dequeue", pb.DequeueRequest(**{"stream_name": "q", "consumer_id": "a", **fields})


INVALID_REQUESTS: list[tuple[str, tuple[str, Any]]] = [
    ("stream_name", _dequeue(stream_name="")),
    ("stream_name", _dequeue(stream_name="-bad")),
    ("consumer_id", _dequeue(consumer_id="")),
    ("consumer_id", _dequeue(consumer_id=_LONG)),
    ("visibility_timeout", _dequeue(visibility_timeout=seconds(12 * 3600 + 1))),
    ("visibility_timeout", _dequeue(visibility_timeout=seconds(0))),
    ("visibility_timeout", _dequeue(visibility_timeout=seconds(-1))),
    ("max_messages", _dequeue(max_messages=-1)),
    ("wait_time", _dequeue(wait_time=seconds(-1))),
    ("events", ("Enqueue", pb.EnqueueRequest(stream_name="q"))),
    (
        "events[0].data",
        (
            "Enqueue",
            pb.EnqueueRequest(
                stream_name="q", events=[pb.EventData(event_type="T", data=b"{not json")]
            ),
        ),
    ),
    (
        "events[0].event_type",
        ("Enqueue", pb.EnqueueRequest(stream_name="q", events=[pb.EventData(data=b"{}")])),
    ),
    ("event_ids", ("Acknowledge", pb.AcknowledgeRequest(stream_name="q", consumer_id="a"))),
    (
        "event_ids",
        (
            "Acknowledge",
            pb.AcknowledgeRequest(stream_name="q", consumer_id="a", event_ids=[_ID] * 1001),
        ),
    ),
    (
        "event_ids[1]",
        (
            "Acknowledge",
            pb.AcknowledgeRequest(stream_name="q", consumer_id="a", event_ids=[_ID, "nope"]),
        ),
    ),
    ("consumer_id", ("Acknowledge", pb.AcknowledgeRequest(stream_name="q", event_ids=[_ID]))),
    ("event_id", ("Nack", pb.NackRequest(stream_name="q", consumer_id="a"))),
    ("event_id", ("Nack", pb.NackRequest(stream_name="q", consumer_id="a", event_id="nope"))),
    ("consumer_id", ("Nack", pb.NackRequest(stream_name="q", event_id=_ID))),
    (
        "delay",
        ("Nack", pb.NackRequest(stream_name="q", consumer_id="a", event_id=_ID, delay=seconds(-1))),
    ),
    (
        "delay",
        (
            "Nack",
            pb.NackRequest(
                stream_name="q", consumer_id="a", event_id=_ID, delay=seconds(13 * 3600)
            ),
        ),
    ),
    (
        "reason",
        ("Nack", pb.NackRequest(stream_name="q", consumer_id="a", event_id=_ID, reason="r" * 1001)),
    ),
    (
        "visibility_timeout",
        (
            "ExtendVisibility",
            pb.ExtendVisibilityRequest(stream_name="q", consumer_id="a", event_id=_ID),
        ),
    ),
    (
        "visibility_timeout",
        (
            "ExtendVisibility",
            pb.ExtendVisibilityRequest(
                stream_name="q",
                consumer_id="a",
                event_id=_ID,
                visibility_timeout=seconds(12 * 3600 + 1),
            ),
        ),
    ),
    (
        "event_id",
        (
            "ExtendVisibility",
            pb.ExtendVisibilityRequest(
                stream_name="q", consumer_id="a", visibility_timeout=seconds(5)
            ),
        ),
    ),
    ("max_count", ("ListDeadLetters", pb.ListDeadLettersRequest(stream_name="q", max_count=-1))),
    ("stream_name", ("ListDeadLetters", pb.ListDeadLettersRequest())),
    (
        "event_ids[0]",
        ("RedriveDeadLetters", pb.RedriveDeadLettersRequest(stream_name="q", event_ids=["x"])),
    ),
    (
        "event_ids",
        (
            "RedriveDeadLetters",
            pb.RedriveDeadLettersRequest(stream_name="q", event_ids=[_ID] * 1001),
        ),
    ),
]


_RECEIPT = str(Receipt(uuid.uuid4(), uuid.uuid4()))


def _configure(**fields: Any) -> tuple[str, Any]:
    return "ConfigureStream", pb.ConfigureStreamRequest(
        stream_name="q", configuration=pb.StreamConfiguration(**fields)
    )


def _enqueue(**fields: Any) -> tuple[str, Any]:
    return "Enqueue", pb.EnqueueRequest(stream_name="q", events=[event()], **fields)


def _in(days: float) -> Timestamp:
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC) + timedelta(days=days))
    return at


INVALID_REQUESTS += [
    ("delay", _enqueue(delay=seconds(-1))),
    ("delay", _enqueue(delay=seconds(7 * 86400 + 1))),
    ("deliver_at", _enqueue(deliver_at=_in(7.01))),
    ("deliver_at", _enqueue(delay=seconds(1), deliver_at=_in(0))),
    (
        "events[0].ordering_key",
        ("Enqueue", pb.EnqueueRequest(stream_name="q", events=[event(ordering_key=_LONG)])),
    ),
    (
        "events[0].ordering_key",
        ("Enqueue", pb.EnqueueRequest(stream_name="q", events=[event(ordering_key="a\x00")])),
    ),
    (
        "receipts",
        (
            "Acknowledge",
            pb.AcknowledgeRequest(
                stream_name="q", consumer_id="a", event_ids=[_ID], receipts=[_RECEIPT]
            ),
        ),
    ),
    (
        "receipts[1]",
        (
            "Acknowledge",
            pb.AcknowledgeRequest(stream_name="q", consumer_id="a", receipts=[_RECEIPT, "r"]),
        ),
    ),
    (
        "receipts",
        (
            "Acknowledge",
            pb.AcknowledgeRequest(stream_name="q", consumer_id="a", receipts=[_RECEIPT] * 1001),
        ),
    ),
    ("receipt", ("Nack", pb.NackRequest(stream_name="q", consumer_id="a", receipt="x"))),
    (
        "receipt",
        ("Nack", pb.NackRequest(stream_name="q", consumer_id="a", event_id=_ID, receipt=_RECEIPT)),
    ),
    (
        "receipt",
        (
            "ExtendVisibility",
            pb.ExtendVisibilityRequest(
                stream_name="q",
                consumer_id="a",
                receipt=_RECEIPT + "=",
                visibility_timeout=seconds(5),
            ),
        ),
    ),
    (
        "configuration.retry_initial_delay",
        _configure(retry_initial_delay=seconds(12 * 3600 + 1), retry_max_delay=seconds(1)),
    ),
    (
        "configuration.retry_max_delay",
        _configure(retry_initial_delay=seconds(2), retry_max_delay=seconds(1)),
    ),
    ("configuration.retry_max_delay", _configure(retry_initial_delay=seconds(2))),
    ("configuration.retry_max_delay", _configure(retry_max_delay=seconds(-1))),
    ("configuration.retry_multiplier", _configure(retry_multiplier=0.5)),
    ("configuration.retry_multiplier", _configure(retry_multiplier=101)),
    ("configuration.retry_multiplier", _configure(retry_multiplier=float("nan"))),
    ("configuration.retry_multiplier", _configure(retry_multiplier=float("-inf"))),
    ("configuration.deduplication_window", _configure(deduplication_window=seconds(-1))),
    (
        "configuration.deduplication_window",
        _configure(deduplication_window=seconds(7 * 86400 + 1)),
    ),
]


@pytest.mark.parametrize(
    ("field", "call"),
    INVALID_REQUESTS,
    ids=[f"{call[0]}-{field}-{i}" for i, (field, call) in enumerate(INVALID_REQUESTS)],
)
async def test_invalid_arguments_name_the_field(
    memory_stub: Stub, field: str, call: tuple[str, Any]
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    rpc, request = call
    error = await rpc_error(getattr(stub, rpc)(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).get("field") == field
    assert (error.details() or "").startswith(f"{field}:")


async def test_a_wait_time_above_the_cap_is_accepted(stub: Stub, stream_name: str) -> None:
    (only,) = await enqueue(stub, stream_name)
    reply = await stub.Dequeue(
        pb.DequeueRequest(stream_name=stream_name, consumer_id="a", wait_time=seconds(3600))
    )
    assert [m.event.event_id for m in reply.messages] == [only]


# -- metadata ----------------------------------------------------------------------


async def test_metadata_counts_pending_in_flight_and_dead_lettered_messages(
    stub: Stub, stream_name: str
) -> None:
    await configure_queue(stub, stream_name, max_attempts=1)
    ids = await enqueue(stub, stream_name, 4)
    held = await dequeue(stub, stream_name, "a", max_messages=2)
    await nack(stub, stream_name, "a", held[0].event.event_id, reason="bad")
    meta = await metadata(stub, stream_name)
    assert meta.stream_type == pb.STREAM_TYPE_EPHEMERAL
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (2, 1, 1)
    assert (meta.length, meta.retained_count) == (4, 3)
    assert (meta.oldest_offset, meta.newest_offset) == (1, 3)
    assert meta.HasField("oldest_event_timestamp")
    assert meta.HasField("created_at")
    await ack(stub, stream_name, "a", [held[1].event.event_id])
    for message in await dequeue(stub, stream_name, "b", max_messages=2):
        await ack(stub, stream_name, "b", [message.event.event_id])
    meta = await metadata(stub, stream_name)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 1)
    assert (meta.retained_count, meta.oldest_offset) == (0, -1)
    assert len(ids) == 4


# -- delays, keys, receipts, settings, age -------------------------------------------


async def test_enqueue_with_a_delay_or_a_time_hides_the_messages_until_then(
    stub: Stub, stream_name: str
) -> None:
    delayed = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=stream_name, events=[event()], delay=seconds(0.5))
    )
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC) + timedelta(seconds=0.5))
    timed = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=stream_name, events=[event()], deliver_at=at)
    )
    assert await dequeue(stub, stream_name, "a") == []
    assert (await metadata(stub, stream_name)).pending_count == 2
    got: list[str] = []
    while len(got) < 2:
        got += ids_of(await dequeue(stub, stream_name, "a", wait=10))
    assert got == [*delayed.event_ids, *timed.event_ids]
    assert time.time() >= epoch(at) - 0.05


async def test_ordering_keys_come_back_and_hold_their_order(stub: Stub, stream_name: str) -> None:
    first, second = await enqueue_ids_keyed(stub, stream_name, ["k", "k"])
    (message,) = await dequeue(stub, stream_name, "a")
    assert (message.event.event_id, message.event.ordering_key) == (first, "k")
    assert await dequeue(stub, stream_name, "b") == []
    await ack(stub, stream_name, "a", [first])
    assert ids_of(await dequeue(stub, stream_name, "b")) == [second]


async def enqueue_ids_keyed(stub: Stub, name: str, keys: list[str]) -> list[str]:
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=name, events=[event(ordering_key=k) for k in keys])
    )
    return list(reply.event_ids)


async def test_receipts_act_on_their_delivery_only(stub: Stub, stream_name: str) -> None:
    (only,) = await enqueue(stub, stream_name)
    (first,) = await dequeue(stub, stream_name, "a", visibility=0.3)
    (second,) = await dequeue(stub, stream_name, "a", wait=10)
    assert first.receipt
    assert first.receipt != second.receipt
    stale = await stub.Acknowledge(
        pb.AcknowledgeRequest(stream_name=stream_name, consumer_id="a", receipts=[first.receipt])
    )
    assert [(f.event_id, f.reason, f.receipt) for f in stale.failed] == [
        (only, "NOT_HELD", first.receipt)
    ]
    for call in (
        stub.Nack(pb.NackRequest(stream_name=stream_name, consumer_id="a", receipt=first.receipt)),
        stub.ExtendVisibility(
            pb.ExtendVisibilityRequest(
                stream_name=stream_name,
                consumer_id="a",
                receipt=first.receipt,
                visibility_timeout=seconds(5),
            )
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    extended = await stub.ExtendVisibility(
        pb.ExtendVisibilityRequest(
            stream_name=stream_name,
            consumer_id="a",
            receipt=second.receipt,
            visibility_timeout=seconds(60),
        )
    )
    assert epoch(extended.visible_until) > time.time() + 50
    done = await stub.Acknowledge(
        pb.AcknowledgeRequest(stream_name=stream_name, consumer_id="a", receipts=[second.receipt])
    )
    assert list(done.acknowledged) == [only]


async def test_the_queue_settings_round_trip(stub: Stub, stream_name: str) -> None:
    stored = await configure_queue(stub, stream_name, dedup_window=600, retry=(1.5, 60, 3))
    fetched = (
        await stub.GetStreamConfiguration(pb.GetStreamConfigurationRequest(stream_name=stream_name))
    ).configuration
    for config in (stored, fetched):
        assert config.retry_initial_delay.ToTimedelta() == timedelta(seconds=1.5)
        assert config.retry_max_delay.ToTimedelta() == timedelta(seconds=60)
        assert config.retry_multiplier == 3
        assert config.deduplication_window.ToTimedelta() == timedelta(minutes=10)
    defaults = await configure_queue(stub, f"{stream_name}-defaults")
    assert defaults.retry_multiplier == 2
    assert defaults.deduplication_window.ToTimedelta() == timedelta(minutes=5)
    assert defaults.retry_initial_delay.ToTimedelta() == timedelta(0)


async def test_metadata_gives_the_oldest_message_enqueue_time(stub: Stub, stream_name: str) -> None:
    first, _ = await enqueue(stub, stream_name, 2)
    (message,) = await dequeue(stub, stream_name, "a", max_messages=1)
    meta = await metadata(stub, stream_name)
    assert meta.oldest_message_enqueued_at == message.event.timestamp
    await ack(stub, stream_name, "a", [first])
    meta = await metadata(stub, stream_name)
    assert epoch(meta.oldest_message_enqueued_at) >= epoch(message.event.timestamp)
    for remaining in await dequeue(stub, stream_name, "a"):
        await ack(stub, stream_name, "a", [remaining.event.event_id])
    assert not (await metadata(stub, stream_name)).HasField("oldest_message_enqueued_at")

"""The queue features through both clients (both backends): delayed and scheduled
enqueues, ordering keys, duplicates, receipts, queue age, the whole stream
configuration kept across ``configure_stream``, and nack delays (an explicit zero
against the queue's retry delay)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventstreaming_client import (
    AckFailure,
    AsyncClient,
    Client,
    EnqueueResult,
    MessageNotFound,
    MessageNotHeld,
    NewEvent,
    StreamConfiguration,
    StreamType,
    _convert,
)
from tests.support import unique_name

#: A retry delay long enough to tell "at once" from "after the retry delay".
RETRY_DELAY = timedelta(seconds=3)


def _queue(client: Client, **settings: object) -> str:
    name = unique_name("jobs")
    client.configure_stream(
        name,
        StreamConfiguration(stream_type=StreamType.EPHEMERAL, **settings),  # type: ignore[arg-type]
    )
    return name


# -- enqueue: delays, ordering keys, duplicates -------------------------------------------------
def test_a_delayed_enqueue_is_invisible_until_its_delay_ends(client: Client) -> None:
    queue = unique_name("jobs")
    [job] = client.enqueue(queue, [NewEvent("Later")], delay=timedelta(seconds=1))
    began = time.monotonic()
    assert client.dequeue(queue, "w1") == []
    assert client.get_stream_metadata(queue).pending_count == 1
    [message] = client.dequeue(queue, "w1", wait_time=timedelta(seconds=5))
    assert message.event_id == job
    assert time.monotonic() - began >= 0.8


def test_an_enqueue_at_a_time_is_delivered_then(client: Client) -> None:
    queue = unique_name("jobs")
    client.enqueue(queue, [NewEvent("Now")])
    at = datetime.now(UTC) + timedelta(seconds=1)
    [later] = client.enqueue(queue, [NewEvent("At")], deliver_at=at)
    [now] = client.dequeue(queue, "w1", max_messages=10)
    assert now.event.event_type == "Now"
    [message] = client.dequeue(queue, "w1", wait_time=timedelta(seconds=5))
    assert message.event_id == later
    assert datetime.now(UTC) >= at - timedelta(seconds=0.1)
    # A time already past delivers at once.
    [past] = client.enqueue(queue, [NewEvent("Past")], deliver_at=datetime.now(UTC) - timedelta(1))
    assert [m.event_id for m in client.dequeue(queue, "w2")] == [past]


def test_bad_enqueue_timing_is_refused_before_anything_is_sent(client: Client) -> None:
    queue = unique_name("jobs")
    soon = datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(ValueError, match="not both"):
        client.enqueue(queue, [NewEvent("E")], delay=timedelta(seconds=1), deliver_at=soon)
    with pytest.raises(ValueError, match="aware"):
        client.enqueue(queue, [NewEvent("E")], deliver_at=datetime.now() + timedelta(seconds=5))
    with pytest.raises(ValueError, match="negative"):
        client.enqueue(queue, [NewEvent("E")], delay=timedelta(seconds=-1))
    with pytest.raises(TypeError, match="timedelta"):
        client.enqueue(queue, [NewEvent("E")], delay=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NewEvent"):
        client.enqueue(queue, ["E"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="datetime"):
        client.enqueue(queue, [NewEvent("E")], deliver_at="tomorrow")  # type: ignore[arg-type]


def test_ordering_keys_deliver_one_message_of_a_key_at_a_time(client: Client) -> None:
    queue = unique_name("jobs")
    first, second, free = client.enqueue(
        queue,
        [
            NewEvent("Mail", {"n": 1}, ordering_key="customer-1"),
            NewEvent("Mail", {"n": 2}, ordering_key="customer-1"),
            NewEvent("Mail", {"n": 3}),
        ],
    )
    leased = client.dequeue(queue, "w1", max_messages=10)
    assert [m.event_id for m in leased] == [first, free]
    assert [m.ordering_key for m in leased] == ["customer-1", ""]
    assert leased[0].event.ordering_key == "customer-1"
    assert client.dequeue(queue, "w2", max_messages=10) == []  # the key is held
    client.acknowledge(queue, "w1", [first])
    [next_of_key] = client.dequeue(queue, "w2", max_messages=10)
    assert (next_of_key.event_id, next_of_key.ordering_key) == (second, "customer-1")


def test_a_log_keeps_ordering_keys(client: Client) -> None:
    name = unique_name()
    client.append_to_stream(name, [NewEvent("E", ordering_key="k-1"), NewEvent("E")])
    assert [e.ordering_key for e in client.iter_stream(name)] == ["k-1", ""]


def test_duplicates_are_reported_and_not_written_again(client: Client) -> None:
    queue = unique_name("jobs")
    known = str(uuid.uuid4())
    first = client.enqueue(queue, [NewEvent("Job", event_id=known)])
    assert isinstance(first, EnqueueResult)
    assert first == [known]
    assert first.duplicate_event_ids == []
    [message] = client.dequeue(queue, "w1")
    client.acknowledge(queue, "w1", [message.event_id])
    # Acknowledged, but within the deduplication window: not delivered again.
    fresh = str(uuid.uuid4())
    again = client.enqueue(
        queue, [NewEvent("Job", event_id=known), NewEvent("Job", event_id=fresh)]
    )
    assert again == [known, fresh]
    assert again.event_ids == [known, fresh]
    assert again.duplicate_event_ids == [known]
    assert again.written_event_ids == [fresh]
    assert [m.event_id for m in client.dequeue(queue, "w1", max_messages=10)] == [fresh]


# -- receipts -----------------------------------------------------------------------------------
def test_receipts_name_one_delivery(client: Client) -> None:
    queue = unique_name("jobs")
    [job] = client.enqueue(queue, [NewEvent("Job")])
    [first] = client.dequeue(queue, "w1")
    assert first.receipt
    client.nack(queue, "w1", receipt=first.receipt, delay=timedelta(0))
    [second] = client.dequeue(queue, "w1", wait_time=timedelta(seconds=2))
    assert (second.event_id, second.delivery_attempt) == (job, 2)
    assert second.receipt
    assert second.receipt != first.receipt
    # The same consumer holds the message, but the first receipt names an earlier
    # delivery: refused, and the message is left alone.
    stale = client.acknowledge(queue, "w1", receipts=[first.receipt])
    assert stale.acknowledged == []
    assert stale.failures == [AckFailure(job, "NOT_HELD", first.receipt)]
    assert stale.failed == {job: "NOT_HELD"}
    with pytest.raises(MessageNotHeld):
        client.extend_visibility(
            queue, "w1", receipt=first.receipt, visibility_timeout=timedelta(seconds=60)
        )
    with pytest.raises(MessageNotHeld):
        client.nack(queue, "w1", receipt=first.receipt)
    until = client.extend_visibility(
        queue, "w1", receipt=second.receipt, visibility_timeout=timedelta(seconds=60)
    )
    assert until is not None
    assert until > datetime.now(UTC) + timedelta(seconds=50)
    done = client.acknowledge(queue, "w1", receipts=[second.receipt])
    assert (done.acknowledged, done.failures) == ([job], [])
    gone = client.acknowledge(queue, "w1", receipts=[second.receipt])
    assert [f.reason for f in gone.failures] == ["NOT_FOUND"]
    with pytest.raises(MessageNotFound):
        client.nack(queue, "w1", receipt=second.receipt)


def test_naming_messages_wrongly_is_refused(client: Client) -> None:
    queue = unique_name("jobs")
    with pytest.raises(ValueError, match="event_ids or by receipts"):
        client.acknowledge(queue, "w1")
    with pytest.raises(ValueError, match="event_ids or by receipts"):
        client.acknowledge(queue, "w1", ["a"], receipts=["b"])
    with pytest.raises(TypeError, match="not one string"):
        client.acknowledge(queue, "w1", str(uuid.uuid4()))
    with pytest.raises(ValueError, match="event_id or by receipt"):
        client.nack(queue, "w1")
    with pytest.raises(ValueError, match="event_id or by receipt"):
        client.nack(queue, "w1", "an-id", receipt="a-receipt")
    with pytest.raises(ValueError, match="more than 0"):
        client.extend_visibility(queue, "w1", "an-id", timedelta(0))
    with pytest.raises(TypeError, match="timedelta"):
        client.extend_visibility(queue, "w1", "an-id")


# -- queue age ------------------------------------------------------------------------------------
def test_metadata_gives_the_oldest_messages_enqueue_time(client: Client) -> None:
    queue = unique_name("jobs")
    before = datetime.now(UTC) - timedelta(seconds=1)
    [job] = client.enqueue(queue, [NewEvent("Job")])
    client.enqueue(queue, [NewEvent("Job")])
    enqueued_at = client.get_stream_metadata(queue).oldest_message_enqueued_at
    assert enqueued_at is not None
    assert before <= enqueued_at <= datetime.now(UTC) + timedelta(seconds=1)
    leased = client.dequeue(queue, "w1", max_messages=10)
    assert client.get_stream_metadata(queue).oldest_message_enqueued_at == enqueued_at
    client.acknowledge(queue, "w1", [m.event_id for m in leased])
    assert client.get_stream_metadata(queue).oldest_message_enqueued_at is None
    log = unique_name()
    client.append_to_stream(log, [NewEvent("E")])
    assert client.get_stream_metadata(log).oldest_message_enqueued_at is None
    assert job


# -- configuration --------------------------------------------------------------------------------
def test_the_defaults_are_the_servers(client: Client) -> None:
    queue = unique_name("jobs")
    wanted = StreamConfiguration(stream_type=StreamType.EPHEMERAL)
    assert client.configure_stream(queue, wanted) == wanted
    assert client.get_stream_configuration(queue) == wanted
    client.enqueue(other := unique_name("jobs"), [NewEvent("Job")])
    assert client.get_stream_configuration(other) == wanted


def test_configuring_keeps_every_setting_given(client: Client) -> None:
    queue = unique_name("jobs")
    wanted = StreamConfiguration(
        stream_type=StreamType.EPHEMERAL,
        max_delivery_attempts=3,
        default_visibility_timeout=timedelta(seconds=45),
        retry_initial_delay=timedelta(seconds=2),
        retry_max_delay=timedelta(seconds=40),
        retry_multiplier=3.0,
        # An explicit zero, which is not the default (5 minutes).
        deduplication_window=timedelta(0),
    )
    assert client.configure_stream(queue, wanted) == wanted
    assert client.get_stream_configuration(queue) == wanted
    # Changing one setting the documented way keeps all the others.
    changed = dataclasses.replace(client.get_stream_configuration(queue), max_delivery_attempts=4)
    client.configure_stream(queue, changed)
    assert client.get_stream_configuration(queue) == dataclasses.replace(
        wanted, max_delivery_attempts=4
    )
    # A window of 0: an acknowledged id is no longer a duplicate.
    known = str(uuid.uuid4())
    client.enqueue(queue, [NewEvent("Job", event_id=known)])
    [message] = client.dequeue(queue, "w1")
    client.acknowledge(queue, "w1", [message.event_id])
    assert client.enqueue(queue, [NewEvent("Job", event_id=known)]).duplicate_event_ids == []


def test_a_bad_configuration_is_refused(client: Client) -> None:
    queue = unique_name("jobs")
    with pytest.raises(ValueError, match="retry_initial_delay"):
        client.configure_stream(
            queue,
            StreamConfiguration(
                stream_type=StreamType.EPHEMERAL, retry_initial_delay=timedelta(seconds=-1)
            ),
        )
    with pytest.raises(TypeError, match="StreamConfiguration"):
        client.configure_stream(queue, {"max_delivery_attempts": 3})  # type: ignore[arg-type]


# -- nack delays ----------------------------------------------------------------------------------
def test_a_zero_nack_delay_is_at_once_and_none_waits_for_the_retry_delay(client: Client) -> None:
    queue = _queue(client, retry_initial_delay=RETRY_DELAY, retry_max_delay=RETRY_DELAY)
    at_once, later = client.enqueue(queue, [NewEvent("Job"), NewEvent("Job")])
    client.dequeue(queue, "w1", max_messages=2)
    began = time.monotonic()
    client.nack(queue, "w1", at_once, delay=timedelta(0))
    client.nack(queue, "w1", later)  # delay None: the queue's retry policy
    [first] = client.dequeue(queue, "w2", max_messages=2, wait_time=timedelta(seconds=1))
    assert first.event_id == at_once
    assert time.monotonic() - began < RETRY_DELAY.total_seconds() * 0.5
    assert client.dequeue(queue, "w2", max_messages=2) == []  # still waiting out its delay
    [second] = client.dequeue(queue, "w2", wait_time=timedelta(seconds=6))
    assert second.event_id == later
    # The server's jitter is 10% either way.
    assert time.monotonic() - began >= RETRY_DELAY.total_seconds() * 0.85


def test_nack_delays_are_sent_as_given() -> None:
    def delay_of(delay: timedelta | None) -> timedelta | None:
        request = _convert.nack_request("q", "w", "id", None, delay, "")
        return request.delay.ToTimedelta() if request.HasField("delay") else None

    assert delay_of(None) is None
    assert delay_of(timedelta(0)) == timedelta(0)
    assert delay_of(timedelta(seconds=5)) == timedelta(seconds=5)
    stream = _convert.consume_nack(1, "id", None, timedelta(0), "")
    assert stream.nack.HasField("delay")
    assert not _convert.consume_nack(1, "id", None, None, "").nack.HasField("delay")


def test_every_configuration_duration_is_sent() -> None:
    message = _convert.configuration_message(
        StreamConfiguration(stream_type=StreamType.EPHEMERAL, deduplication_window=timedelta(0))
    )
    for name in (
        "default_visibility_timeout",
        "retry_initial_delay",
        "retry_max_delay",
        "deduplication_window",
    ):
        assert message.HasField(name), name
    assert not message.HasField("retention_max_age")
    assert message.deduplication_window.ToTimedelta() == timedelta(0)
    assert message.retry_multiplier == 2.0


# -- the asyncio client ---------------------------------------------------------------------------
async def test_the_async_client_has_the_queue_features(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    await aclient.configure_stream(
        queue,
        StreamConfiguration(
            stream_type=StreamType.EPHEMERAL,
            retry_initial_delay=RETRY_DELAY,
            retry_max_delay=RETRY_DELAY,
        ),
    )
    config = await aclient.get_stream_configuration(queue)
    assert (config.retry_initial_delay, config.deduplication_window) == (
        RETRY_DELAY,
        timedelta(minutes=5),
    )
    known = str(uuid.uuid4())
    ids = await aclient.enqueue(
        queue, [NewEvent("Job", event_id=known, ordering_key="k"), NewEvent("Job")]
    )
    assert (
        await aclient.enqueue(queue, [NewEvent("Job", event_id=known)])
    ).duplicate_event_ids == [known]
    [delayed] = await aclient.enqueue(queue, [NewEvent("Job")], delay=timedelta(minutes=5))
    meta = await aclient.get_stream_metadata(queue)
    assert meta.pending_count == 3
    assert meta.oldest_message_enqueued_at is not None
    leased = await aclient.dequeue(queue, "w1", max_messages=10)
    assert [m.event_id for m in leased] == ids
    assert leased[0].ordering_key == "k"
    keyed, plain = leased
    until = await aclient.extend_visibility(
        queue, "w1", receipt=keyed.receipt, visibility_timeout=timedelta(seconds=90)
    )
    assert until is not None
    await aclient.nack(queue, "w1", receipt=keyed.receipt, delay=timedelta(0))
    await aclient.nack(queue, "w1", plain.event_id)  # waits out the retry delay
    [again] = await aclient.dequeue(queue, "w2", max_messages=10, wait_time=timedelta(seconds=1))
    assert (again.event_id, again.delivery_attempt) == (known, 2)
    stale = await aclient.acknowledge(queue, "w2", receipts=[keyed.receipt])
    assert stale.failures == [AckFailure(known, "NOT_HELD", keyed.receipt)]
    done = await aclient.acknowledge(queue, "w2", receipts=[again.receipt])
    assert done.acknowledged == [known]
    with pytest.raises(ValueError, match="event_id or by receipt"):
        await aclient.nack(queue, "w2")
    assert delayed

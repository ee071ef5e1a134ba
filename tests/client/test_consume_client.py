"""Consume streams through both clients (both backends): deliveries under
``max_outstanding``, acks, nacks and extends answered on the stream, batches, and
a close that gives back what the stream holds; and the blocking client's
AppendSession."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from eventstreaming_client import (
    AckFailure,
    AsyncClient,
    Client,
    ConsumeStreamClosed,
    MessageNotFound,
    MessageNotHeld,
    NewEvent,
    QueueMessage,
    StreamAppend,
    StreamConfiguration,
    StreamType,
    Unavailable,
    WrongExpectedOffset,
    WrongStreamType,
)
from tests.conftest import server_settings, start_server
from tests.support import unique_name, wait_until, wait_until_sync


async def _next(stream: object, timeout: float = 5.0) -> QueueMessage:
    return await asyncio.wait_for(stream.__anext__(), timeout)  # type: ignore[attr-defined]


async def _nothing_within(stream: object, seconds: float) -> bool:
    """True when no message comes within ``seconds`` (a cancelled wait loses none)."""
    try:
        await _next(stream, seconds)
    except TimeoutError:
        return True
    return False


# -- asyncio -------------------------------------------------------------------------------------
async def test_messages_are_pushed_under_max_outstanding(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    ids = await aclient.enqueue(queue, [NewEvent("Job", {"n": i}) for i in range(4)])
    async with aclient.consume_stream(
        queue, max_outstanding=2, visibility_timeout=timedelta(seconds=30)
    ) as stream:
        assert stream.consumer_id
        first, second = await _next(stream), await _next(stream)
        assert [first.event_id, second.event_id] == ids[:2]
        assert first.receipt
        assert first.delivery_attempt == 1
        assert first.visible_until is not None
        # The window is full: nothing more until one is settled.
        assert await _nothing_within(stream, 0.3)
        result = await stream.ack(first)
        assert (result.acknowledged, result.failures) == ([ids[0]], [])
        third = await _next(stream)
        assert third.event_id == ids[2]
        until = await stream.extend(third, visibility_timeout=timedelta(seconds=90))
        assert until is not None
        assert until > datetime.now(UTC) + timedelta(seconds=80)
        # Given back at once: it comes again, on this stream (the only consumer).
        await stream.nack(second, delay=timedelta(0), reason="later")
        again = await _next(stream)
        assert (again.event_id, again.delivery_attempt) == (ids[1], 2)
        # Settled or stale: reported as the unary calls report them.
        with pytest.raises(MessageNotFound):
            await stream.extend(first, visibility_timeout=timedelta(seconds=5))
        with pytest.raises(MessageNotHeld):
            await stream.nack(second)
        stale = await stream.ack(second)
        assert stale.failures == [AckFailure(ids[1], "NOT_HELD", second.receipt)]
        by_id = await stream.ack(event_ids=[again.event_id])
        assert by_id.acknowledged == [ids[1]]
        fourth = await _next(stream)
        assert fourth.event_id == ids[3]
        meta = await aclient.get_stream_metadata(queue)
        assert (meta.in_flight_count, meta.pending_count) == (2, 0)
    # The close gave back what the stream held, visible again at once.
    meta = await aclient.get_stream_metadata(queue)
    assert (meta.in_flight_count, meta.pending_count) == (0, 2)
    assert stream.ended
    assert stream.received == 5
    leased = await aclient.dequeue(queue, "next", max_messages=10)
    assert sorted(m.event_id for m in leased) == sorted(ids[2:])
    with pytest.raises(ConsumeStreamClosed):
        await stream.ack(leased[0])


async def test_the_iteration_ends_when_the_stream_is_closed(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    await aclient.enqueue(queue, [NewEvent("Job") for _ in range(3)])
    stream = aclient.consume_stream(queue, max_outstanding=3)
    seen: list[QueueMessage] = []

    async def follow() -> None:
        async for message in stream:
            seen.append(message)
            if len(seen) == 1:
                await stream.ack(message)
                await stream.close()  # the other two are given back unseen or unsettled

    await asyncio.wait_for(follow(), 10)
    assert len(seen) == 1
    meta = await aclient.get_stream_metadata(queue)
    assert (meta.retained_count, meta.in_flight_count, meta.pending_count) == (2, 0, 2)


async def test_batches_and_many_acks_at_once(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    ids = await aclient.enqueue(queue, [NewEvent("Job", {"n": i}) for i in range(12)])
    async with aclient.consume_stream(queue, max_outstanding=12, max_batch=5) as stream:
        messages = [await _next(stream) for _ in range(12)]
        assert [m.event_id for m in messages] == ids
        result = await stream.ack(*messages)
        assert sorted(result.acknowledged) == sorted(ids)
    assert (await aclient.get_stream_metadata(queue)).retained_count == 0


async def test_a_stream_on_a_log_ends_with_the_servers_error(aclient: AsyncClient) -> None:
    log = unique_name()
    await aclient.append_to_stream(log, [NewEvent("E")])
    async with aclient.consume_stream(log) as stream:
        with pytest.raises(WrongStreamType):
            await _next(stream)
        with pytest.raises(WrongStreamType):
            await stream.ack(event_ids=["00000000-0000-0000-0000-000000000000"])


async def test_bad_consume_input_is_refused_before_anything_is_sent(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    with pytest.raises(ValueError, match="max_outstanding"):
        aclient.consume_stream(queue, max_outstanding=0)
    with pytest.raises(ValueError, match="max_batch"):
        aclient.consume_stream(queue, max_batch=101)
    with pytest.raises(ValueError, match="visibility_timeout"):
        aclient.consume_stream(queue, visibility_timeout=timedelta(0))
    with pytest.raises(ValueError, match="consumer_id"):
        aclient.consume_stream(queue, consumer_id="")
    await aclient.enqueue(queue, [NewEvent("Job")])
    async with aclient.consume_stream(queue) as stream:
        message = await _next(stream)
        with pytest.raises(ValueError, match="event_ids or by receipts"):
            await stream.ack()
        with pytest.raises(TypeError, match="QueueMessage"):
            await stream.ack([message])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name the message once"):
            await stream.nack(message, receipt=message.receipt)
        with pytest.raises(ValueError, match="negative"):
            await stream.nack(message, delay=timedelta(seconds=-1))
        # Nothing was sent for those: the stream still works.
        assert (await stream.ack(message)).acknowledged == [message.event_id]


async def test_a_zero_delay_on_the_stream_is_at_once_and_none_waits(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    delay = timedelta(seconds=3)
    await aclient.configure_stream(
        queue,
        StreamConfiguration(
            stream_type=StreamType.EPHEMERAL, retry_initial_delay=delay, retry_max_delay=delay
        ),
    )
    at_once, later = await aclient.enqueue(queue, [NewEvent("Job"), NewEvent("Job")])
    async with aclient.consume_stream(queue, max_outstanding=5) as stream:
        first = {m.event_id: m for m in [await _next(stream), await _next(stream)]}
        await stream.nack(first[at_once], delay=timedelta(0))
        await stream.nack(first[later])
        again = await _next(stream, timeout=1.5)
        assert again.event_id == at_once
        assert await _nothing_within(stream, 1.0)
        assert (await _next(stream, timeout=6)).event_id == later


# -- the blocking client ------------------------------------------------------------------------
def test_the_blocking_consume_stream(client: Client) -> None:
    queue = unique_name("jobs")
    ids = client.enqueue(queue, [NewEvent("Job", {"n": i}) for i in range(3)])
    with client.consume_stream(queue, consumer_id="reader-1", max_outstanding=2) as stream:
        assert stream.consumer_id == "reader-1"
        first, second = next(stream), next(stream)
        assert [first.event_id, second.event_id] == ids[:2]
        assert stream.receive(timeout=0.3) is None  # the window is full
        assert stream.ack(first).acknowledged == [ids[0]]
        third = stream.receive(timeout=5)
        assert third is not None
        assert third.event_id == ids[2]
        assert stream.extend(third, visibility_timeout=timedelta(seconds=60)) is not None
        stream.nack(second, delay=timedelta(0), reason="later")
        again = stream.receive(timedelta(seconds=5))
        assert again is not None
        assert (again.event_id, again.delivery_attempt) == (ids[1], 2)
        with pytest.raises(MessageNotHeld):
            stream.extend(second, visibility_timeout=timedelta(seconds=5))
    meta = client.get_stream_metadata(queue)
    assert (meta.in_flight_count, meta.pending_count) == (0, 2)
    assert stream.ended
    assert stream.receive(timeout=0.1) is None
    with pytest.raises(ConsumeStreamClosed):
        stream.ack(third)


def test_a_blocking_stream_closed_from_another_thread(client: Client) -> None:
    queue = unique_name("jobs")
    stream = client.consume_stream(queue, max_outstanding=1)
    seen: list[QueueMessage] = []

    def follow() -> None:
        for message in stream:
            seen.append(message)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    client.enqueue(queue, [NewEvent("Job"), NewEvent("Job")])
    wait_until_sync(lambda: len(seen) == 1, timeout=10, interval=0.02)
    stream.close()
    reader.join(10)
    assert not reader.is_alive()
    assert len(seen) == 1
    assert client.get_stream_metadata(queue).pending_count == 2


def test_the_blocking_append_session(client: Client) -> None:
    name = unique_name("session")
    with client.append_session() as session:
        futures = [
            session.submit_append_to_stream(
                name, [NewEvent("E", {"n": i})], expected_last_offset=i - 1
            )
            for i in range(100)
        ]
        assert [f.result(10).first_offset for f in futures] == list(range(100))
        stale = session.submit_append_to_stream(name, [NewEvent("E")], expected_last_offset=7)
        good = session.append_to_streams([StreamAppend(name, [NewEvent("E")], 99)])
        assert good[0].first_offset == 100
        with pytest.raises(WrongExpectedOffset) as caught:
            stale.result(10)
        assert caught.value.actual_last_offset in (99, 100)
        assert session.append_to_stream(name, [NewEvent("E")]).first_offset == 101
    assert client.get_stream_length(name) == 102
    with pytest.raises(Exception, match="closed"):
        session.append_to_stream(name, [NewEvent("E")])


def test_blocking_append_sessions_shared_between_threads(client: Client) -> None:
    names = [unique_name("session") for _ in range(4)]
    with client.append_session() as session:

        def write(name: str) -> None:
            for i in range(25):
                session.append_to_stream(name, [NewEvent("E")], expected_last_offset=i - 1)

        threads = [threading.Thread(target=write, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert [client.get_stream_length(n) for n in names] == [25] * 4


async def test_waiting_requests_fail_when_the_stream_ends() -> None:
    """A server that stops ends its Consume streams with UNAVAILABLE: the
    iteration raises it, and so does a request sent afterwards."""
    running = await start_server(server_settings("memory"), "memory")
    try:
        async with AsyncClient(running.address) as other:
            queue = unique_name("jobs")
            await other.enqueue(queue, [NewEvent("Job")])
            stream = other.consume_stream(queue)
            message = await _next(stream)
            await running.app.stop(grace=5)
            with pytest.raises(Unavailable):
                await _next(stream)
            with pytest.raises(Unavailable):
                await stream.ack(message)
            await stream.close()
            await wait_until(lambda: stream.ended, timeout=5)
    finally:
        await running.close()

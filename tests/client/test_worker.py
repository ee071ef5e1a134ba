"""The queue worker: leases, heartbeats that keep a slow handler's lease, acks,
nacks with the reason, and a clean stop that gives messages back at once (both
clients, both backends); the asyncio worker's Consume stream across a broken
connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from eventstreaming_client import (
    AsyncClient,
    Client,
    NewEvent,
    QueueMessage,
    RetryPolicy,
    StreamConfiguration,
    StreamType,
)
from tests.client import servers
from tests.client.proxy import BreakableProxy
from tests.support import unique_name, wait_until, wait_until_sync


def test_the_heartbeat_keeps_a_slow_handlers_lease(client: Client) -> None:
    """A handler that runs three times the lease: no other consumer gets the
    message meanwhile, and it is acknowledged once."""
    queue = unique_name("jobs")
    [job] = client.enqueue(queue, [NewEvent("Job")])
    handled: list[str] = []

    def slow(message: QueueMessage) -> None:
        time.sleep(3.0)
        handled.append(message.event_id)

    with client.consume(
        queue,
        slow,
        visibility_timeout=timedelta(seconds=1),
        heartbeat_interval=timedelta(seconds=0.25),
        poll_wait=timedelta(seconds=1),
    ) as worker:
        wait_until_sync(lambda: client.get_stream_metadata(queue).in_flight_count == 1, 10, 0.05)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert client.dequeue(queue, "someone-else") == []
            time.sleep(0.2)
        wait_until_sync(lambda: worker.stats.acknowledged == 1, timeout=10, interval=0.05)
    assert handled == [job]
    assert worker.stats.extensions >= 4
    assert worker.stats.lost_leases == 0
    meta = client.get_stream_metadata(queue)
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


def test_failures_are_nacked_with_the_reason(client: Client) -> None:
    queue = unique_name("jobs")
    client.configure_stream(
        queue, StreamConfiguration(stream_type=StreamType.EPHEMERAL, max_delivery_attempts=2)
    )
    [job] = client.enqueue(queue, [NewEvent("Job")])

    def broken(message: QueueMessage) -> None:
        raise ValueError(f"cannot do {message.event.event_type}")

    with client.consume(queue, broken, concurrency=2, poll_wait=timedelta(seconds=1)) as worker:
        wait_until_sync(lambda: worker.stats.nacked == 2, timeout=10, interval=0.05)
    [dead] = client.list_dead_letters(queue).dead_letters
    assert dead.event.event_id == job
    assert dead.reason == "ValueError: cannot do Job"
    assert dead.delivery_attempts == 2


def test_stopping_releases_held_messages_at_once(client: Client) -> None:
    queue = unique_name("jobs")
    [job] = client.enqueue(queue, [NewEvent("Job")])
    started, release = threading.Event(), threading.Event()

    def stuck(message: QueueMessage) -> None:
        started.set()
        release.wait(30)

    worker = client.consume(
        queue,
        stuck,
        visibility_timeout=timedelta(minutes=5),
        drain_timeout=timedelta(seconds=0.2),
    )
    worker.start()
    assert started.wait(10)
    began = time.monotonic()
    worker.stop()  # the long polls of the idle slots are cut short too
    assert time.monotonic() - began < 5
    assert worker.stats.released == 1
    # Visible again at once, although its lease had five minutes left.
    [again] = client.dequeue(queue, "next", wait_time=timedelta(seconds=2))
    assert (again.event_id, again.delivery_attempt) == (job, 2)
    release.set()


def test_concurrency_many_handlers_at_once(client: Client) -> None:
    queue = unique_name("jobs")
    client.enqueue(queue, [NewEvent("Job", {"n": i}) for i in range(8)])
    running, peak = 0, 0
    lock = threading.Lock()

    def handler(message: QueueMessage) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.3)
        with lock:
            running -= 1

    with client.consume(queue, handler, concurrency=4, poll_wait=timedelta(seconds=1)) as worker:
        wait_until_sync(lambda: worker.stats.acknowledged == 8, timeout=20, interval=0.05)
    assert peak == 4


async def test_the_async_worker(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    ids = await aclient.enqueue(queue, [NewEvent("Job", {"n": i}) for i in range(6)])
    seen: list[str] = []
    failures = 0

    async def handler(message: QueueMessage) -> None:
        nonlocal failures
        if message.event.json()["n"] == 0 and message.delivery_attempt == 1:
            failures += 1
            raise RuntimeError("first try fails")
        await asyncio.sleep(0.05)
        seen.append(message.event_id)

    async with aclient.consume(
        queue, handler, concurrency=3, poll_wait=timedelta(seconds=1)
    ) as worker:
        await wait_until(lambda: worker.stats.acknowledged == 6, timeout=20)
    assert sorted(seen) == sorted(ids)
    assert worker.stats.nacked == failures == 1
    assert not worker.running


async def test_the_async_heartbeat_keeps_the_lease(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    [job] = await aclient.enqueue(queue, [NewEvent("Job")])
    done = asyncio.Event()

    async def slow(message: QueueMessage) -> None:
        await asyncio.sleep(2.0)
        done.set()

    async with aclient.consume(
        queue,
        slow,
        visibility_timeout=timedelta(seconds=0.6),
        heartbeat_interval=timedelta(seconds=0.15),
        poll_wait=timedelta(seconds=1),
    ) as worker:
        await wait_until(lambda: worker.stats.extensions >= 1, timeout=10)
        while not done.is_set():
            assert await aclient.dequeue(queue, "someone-else") == []
            await asyncio.sleep(0.1)
        await wait_until(lambda: worker.stats.acknowledged == 1, timeout=10)
    assert worker.stats.lost_leases == 0
    assert (await aclient.get_stream_metadata(queue)).pending_count == 0
    assert job


# -- releases on stop are immediate, whatever the queue's retry delay ------------------------
def _slow_retry_queue(client: Client) -> str:
    queue = unique_name("jobs")
    client.configure_stream(
        queue,
        StreamConfiguration(
            stream_type=StreamType.EPHEMERAL,
            retry_initial_delay=timedelta(minutes=1),
            retry_max_delay=timedelta(minutes=1),
        ),
    )
    return queue


def test_stopping_releases_at_once_despite_a_retry_delay(client: Client) -> None:
    queue = _slow_retry_queue(client)
    [job] = client.enqueue(queue, [NewEvent("Job")])
    started, release = threading.Event(), threading.Event()

    def stuck(message: QueueMessage) -> None:
        started.set()
        release.wait(30)

    worker = client.consume(
        queue, stuck, visibility_timeout=timedelta(minutes=5), drain_timeout=timedelta(seconds=0.2)
    )
    worker.start()
    assert started.wait(10)
    worker.stop()
    assert worker.stats.released == 1
    # Not after the queue's one-minute retry delay: now.
    [again] = client.dequeue(queue, "next", wait_time=timedelta(seconds=2))
    assert (again.event_id, again.delivery_attempt) == (job, 2)
    release.set()


async def test_the_async_worker_stops_cleanly_and_releases_at_once(aclient: AsyncClient) -> None:
    """Two handlers stuck past the drain time are cancelled and their messages given
    back at once (the queue's retry delay notwithstanding); the third message was
    never taken (the stream holds as many as the worker runs)."""
    queue = unique_name("jobs")
    await aclient.configure_stream(
        queue,
        StreamConfiguration(
            stream_type=StreamType.EPHEMERAL,
            retry_initial_delay=timedelta(minutes=1),
            retry_max_delay=timedelta(minutes=1),
        ),
    )
    ids = await aclient.enqueue(queue, [NewEvent("Job") for _ in range(3)])
    running: list[str] = []
    cancelled: list[str] = []

    async def stuck(message: QueueMessage) -> None:
        running.append(message.event_id)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(message.event_id)
            raise

    worker = aclient.consume(
        queue,
        stuck,
        concurrency=2,
        visibility_timeout=timedelta(minutes=5),
        drain_timeout=timedelta(seconds=0.2),
    )
    await worker.start()
    await wait_until(lambda: len(running) == 2, timeout=10)
    began = time.monotonic()
    await worker.stop()
    assert time.monotonic() - began < 5
    assert not worker.running
    assert sorted(cancelled) == sorted(running) == sorted(ids[:2])
    assert worker.stats.released == 2
    meta = await aclient.get_stream_metadata(queue)
    assert (meta.in_flight_count, meta.pending_count) == (0, 3)
    again = await aclient.dequeue(queue, "next", max_messages=10)
    assert sorted((m.event_id, m.delivery_attempt) for m in again) == sorted(
        [(ids[0], 2), (ids[1], 2), (ids[2], 1)]
    )


async def test_the_async_worker_nacks_with_the_reason_and_its_delay(aclient: AsyncClient) -> None:
    queue = unique_name("jobs")
    await aclient.configure_stream(
        queue, StreamConfiguration(stream_type=StreamType.EPHEMERAL, max_delivery_attempts=2)
    )
    [job] = await aclient.enqueue(queue, [NewEvent("Job")])
    attempts: list[int] = []

    async def broken(message: QueueMessage) -> None:
        attempts.append(message.delivery_attempt)
        raise ValueError("no luck")

    async with aclient.consume(queue, broken, nack_delay=timedelta(0)) as worker:
        await wait_until(lambda: worker.stats.nacked == 2, timeout=10)
    assert attempts == [1, 2]
    [dead] = (await aclient.list_dead_letters(queue)).dead_letters
    assert (dead.event.event_id, dead.reason, dead.delivery_attempts) == (
        job,
        "ValueError: no luck",
        2,
    )


@pytest.fixture
def proxy(thread_server: servers.ThreadServer) -> Iterator[BreakableProxy]:
    made = BreakableProxy(int(thread_server.address.rsplit(":", 1)[1]))
    try:
        yield made
    finally:
        made.close()


async def test_the_async_worker_carries_on_after_a_broken_connection(
    proxy: BreakableProxy, client: Client
) -> None:
    """The connection breaks while a handler runs: the worker opens a new stream
    once it can, the running handler's message is settled by its receipt, and
    later messages come over the new stream. (The server may also treat the cut
    as the stream's end and give the held message back: it is then handled
    again, and the stale delivery's ack is refused, not applied to the new one.)"""
    queue = unique_name("jobs")
    [first] = client.enqueue(queue, [NewEvent("Job")])
    started, finish = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handler(message: QueueMessage) -> None:
        if message.event_id == first:
            started.set()
            await finish.wait()
        handled.append(message.event_id)

    retry = RetryPolicy(max_attempts=30, initial_backoff=0.02, max_backoff=0.2)
    async with (
        AsyncClient(proxy.address, retry=retry, timeout=20) as through,
        through.consume(queue, handler, concurrency=2) as worker,
    ):
        await asyncio.wait_for(started.wait(), 10)
        proxy.cut()
        await asyncio.sleep(0.3)
        proxy.restore()
        finish.set()
        later = client.enqueue(queue, [NewEvent("Job") for _ in range(3)])
        await wait_until(lambda: client.get_stream_metadata(queue).retained_count == 0, timeout=20)
        await wait_until(
            lambda: worker.stats.acknowledged + worker.stats.lost_leases == len(handled),
            timeout=10,
        )
    assert sorted(h for h in handled if h != first) == sorted(later)
    assert handled.count(first) in (1, 2)
    assert worker.stats.acknowledged == 4
    assert worker.stats.lost_leases == len(handled) - 4
    assert client.get_stream_metadata(queue).in_flight_count == 0

"""The queue worker: leases, heartbeats that keep a slow handler's lease, acks,
nacks with the reason, and a clean stop (both clients, both backends)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

from eventstreaming_client import (
    AsyncClient,
    Client,
    NewEvent,
    QueueMessage,
    StreamConfiguration,
    StreamType,
)
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

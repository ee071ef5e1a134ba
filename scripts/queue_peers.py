"""The same queue pipeline as scripts/bench_queue.py (producers enqueue batches of
100 while consumers take and acknowledge them) on NATS JetStream and on Redis
streams, for comparison in the same run. Their clients come from the ``bench``
extra (pip install -e '.[bench]'); a peer whose client is missing or whose server
does not answer is skipped, with the reason.

- NATS JetStream: a file-backed stream with work-queue retention (a message is
  removed once acknowledged), one durable pull consumer shared by the workers;
  publishes of a batch go out together and each waits for its PubAck; workers
  ``fetch`` up to 100 and ``ack`` each (fire-and-forget, as usual with JetStream).
- Redis: one stream; a batch is one pipelined round trip of XADDs; workers
  XREADGROUP up to 100 and XACK them in one call. Redis persists per its own
  configuration (by default not fsynced per write).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

NATS_URL = os.environ.get("EVENTSTREAMING_BENCH_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("EVENTSTREAMING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Pipeline:
    """One pipeline run: messages per second from the first enqueue to the last ack,
    and each message's latency from its enqueue to its ack."""

    messages: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    acknowledged: int = 0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class Unavailable(Exception):
    """The peer cannot be used here (no client library, or no server)."""


async def run_pipeline(
    messages: int,
    batch: int,
    producers: int,
    consumers: int,
    produce: Callable[[int], Awaitable[None]],
    consume: Callable[[int, Callable[[list[float]], None], asyncio.Event], Awaitable[None]],
) -> Pipeline:
    """Producers call ``produce`` until ``messages`` went in; consumers run
    ``consume(worker, done, finished)`` and report the enqueue times of what they
    acknowledged through ``done``; the run ends when all are acknowledged."""
    batches = messages // batch
    finished = asyncio.Event()
    result = Pipeline(messages, 0.0)

    def done(enqueued_at: list[float]) -> None:
        now = time.time()
        result.latencies.extend(now - t for t in enqueued_at)
        result.acknowledged += len(enqueued_at)
        if result.acknowledged >= messages:
            finished.set()

    async def producer(worker: int) -> None:
        for _ in range(worker, batches, producers):
            await produce(worker)

    started = time.perf_counter()
    workers = [asyncio.create_task(consume(w, done, finished)) for w in range(consumers)]
    try:
        await asyncio.gather(*(producer(w) for w in range(producers)))
        ending = asyncio.create_task(finished.wait())
        await asyncio.wait([ending, *workers], timeout=600, return_when=asyncio.FIRST_COMPLETED)
        ending.cancel()
        for worker in workers:
            if worker.done() and worker.exception() is not None:
                raise RuntimeError("a consumer failed") from worker.exception()
        if not finished.is_set():
            raise TimeoutError(f"acknowledged {result.acknowledged} of {messages} in 600 s")
    finally:
        result.seconds = time.perf_counter() - started
        finished.set()
        for worker in workers:  # those waiting for more than there is
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return result


def _payload(body: bytes) -> bytes:
    return f"{time.time():.6f}|".encode() + body


def _enqueued_at(data: bytes) -> float:
    return float(data.split(b"|", 1)[0])


async def nats_pipeline(
    messages: int, batch: int, producers: int, consumers: int, body: bytes
) -> Pipeline:
    try:
        import nats
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    except ImportError as exc:
        raise Unavailable("nats-py is not installed (pip install -e '.[bench]')") from exc
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception as exc:
        raise Unavailable(f"no NATS server at {NATS_URL} ({type(exc).__name__})") from exc
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    subject = f"bench.{stream.lower()}"
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        subscriptions = [
            await js.pull_subscribe(subject, durable="workers", stream=stream)
            for _ in range(consumers)
        ]

        async def produce(worker: int) -> None:
            await asyncio.gather(*(js.publish(subject, _payload(body)) for _ in range(batch)))

        async def consume(
            worker: int, done: Callable[[list[float]], None], finished: asyncio.Event
        ) -> None:
            subscription = subscriptions[worker]
            while not finished.is_set():
                try:
                    fetched = await subscription.fetch(batch, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for message in fetched:
                    await message.ack()
                await nc.flush()
                done([_enqueued_at(m.data) for m in fetched])

        return await run_pipeline(messages, batch, producers, consumers, produce, consume)
    finally:
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()


async def redis_pipeline(
    messages: int, batch: int, producers: int, consumers: int, body: bytes
) -> Pipeline:
    try:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
    except ImportError as exc:
        raise Unavailable("redis is not installed (pip install -e '.[bench]')") from exc
    client: Any = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise Unavailable(f"no Redis server at {REDIS_URL} ({type(exc).__name__})") from exc
    stream = f"bench:{uuid.uuid4().hex[:10]}"
    try:
        await client.xgroup_create(stream, "workers", id="0", mkstream=True)

        async def produce(worker: int) -> None:
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.xadd(stream, {"d": _payload(body)})
            await pipe.execute()

        async def consume(
            worker: int, done: Callable[[list[float]], None], finished: asyncio.Event
        ) -> None:
            reader: Any = aioredis.from_url(REDIS_URL)
            try:
                while not finished.is_set():
                    reply = await reader.xreadgroup(
                        "workers", f"c{worker}", {stream: ">"}, count=batch, block=500
                    )
                    if not reply:
                        continue
                    entries = reply[0][1]
                    await reader.xack(stream, "workers", *(entry_id for entry_id, _ in entries))
                    done([_enqueued_at(fields[b"d"]) for _, fields in entries])
            finally:
                await reader.aclose()

        return await run_pipeline(messages, batch, producers, consumers, produce, consume)
    finally:
        await client.delete(stream)
        await client.aclose()

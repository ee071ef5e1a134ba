"""Soak: millions of queue messages enqueued, leased and acknowledged over minutes,
to show that a dequeue costs the same at the end as at the start (no bloat).

Producers enqueue batches of 100 at a steady rate (--soak-rate, or half of what a
short warm-up measured); 4 consumers dequeue up to 100 at a time (Dequeue, no
waiting when messages are there), hold each batch a few milliseconds, then
acknowledge it; 1% of messages are nacked and 0.5% left for their 5-second lease
to run out, so the queue always has leases in flight, redeliveries and dead rows.
Dequeues do not long-poll (an empty one sleeps 5 ms), so the latencies are the
work alone. Every 10 seconds the table is sampled: live and dead tuples as PostgreSQL counts
them, the sizes of the table and of each index, autovacuum runs, and the
VACUUMs the service's retention pass ran.

Reported: the Dequeue call's p50/p99 in the first and in the last minute, the
rates, and the samples at start, peak and end. Run through scripts/bench_queue.py:

    python scripts/bench_queue.py --scenarios soak --soak-messages 3000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, Result, percentile, server_process

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

BATCH = 100
PRODUCERS = 4
CONSUMERS = 4
VISIBILITY_SECONDS = 5
HOLD_SECONDS = 0.005
NACK_CHANCE = 0.01
FORGET_CHANCE = 0.005
SAMPLE_SECONDS = 10
PAYLOAD = b'{"order_id": 12345, "customer": "c-42", "total": 99.5, "items": [1, 2, 3]}'

SAMPLE_SQL = """
SELECT coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead,
       coalesce(s.autovacuum_count, 0) AS autovacuums,
       coalesce(s.vacuum_count, 0) AS vacuums,
       pg_table_size('event_streaming.queue_messages') AS table_bytes,
       pg_indexes_size('event_streaming.queue_messages') AS index_bytes,
       coalesce(pg_total_relation_size(to_regclass('event_streaming.queue_remembered_ids')), 0)
           AS remembered_bytes,
       (SELECT json_object_agg(c.relname, pg_relation_size(c.oid))
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'event_streaming.queue_messages'::regclass) AS indexes
  FROM pg_stat_user_tables s
 WHERE s.relid = 'event_streaming.queue_messages'::regclass
"""


@dataclass
class Soak:
    #: (monotonic time, seconds, messages) of every Dequeue call that returned some.
    dequeues: list[tuple[float, float, int]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    enqueued: int = 0
    acknowledged: int = 0
    started: float = 0.0
    ended: float = 0.0


async def _produce(stub: Any, name: str, soak: Soak, total: int, rate: float) -> None:
    data = PAYLOAD
    request = pb.EnqueueRequest(
        stream_name=name, events=[pb.EventData(event_type="Order", data=data)] * BATCH
    )
    interval = BATCH * PRODUCERS / rate
    next_at = time.monotonic()
    while soak.enqueued < total:
        await stub.Enqueue(request)
        soak.enqueued += BATCH
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _consume(stub: Any, name: str, worker: int, soak: Soak, total: int) -> None:
    """Until everything was enqueued and the queue has stayed empty for longer than a
    lease (the messages left to expire come back meanwhile)."""
    consumer = f"soak-{worker}"
    chance = random.Random(worker)
    idle_since: float | None = None
    while True:
        began = time.monotonic()
        reply = await stub.Dequeue(
            pb.DequeueRequest(
                stream_name=name,
                consumer_id=consumer,
                max_messages=BATCH,
                visibility_timeout={"seconds": VISIBILITY_SECONDS},
            )
        )
        if not reply.messages:
            await asyncio.sleep(0.005)  # no long poll: the calls timed are the work alone
            if soak.enqueued < total:
                continue
            idle_since = idle_since or began
            if time.monotonic() - idle_since > VISIBILITY_SECONDS + 2:
                return
            continue
        idle_since = None
        soak.dequeues.append((began, time.monotonic() - began, len(reply.messages)))
        await asyncio.sleep(HOLD_SECONDS)
        done: list[str] = []
        for message in reply.messages:
            roll = chance.random()
            if roll < FORGET_CHANCE:
                continue
            if roll < FORGET_CHANCE + NACK_CHANCE and message.delivery_attempt < 3:
                await stub.Nack(
                    pb.NackRequest(
                        stream_name=name, consumer_id=consumer, event_id=message.event.event_id
                    )
                )
                continue
            done.append(message.event.event_id)
        if done:
            acked = await stub.Acknowledge(
                pb.AcknowledgeRequest(stream_name=name, consumer_id=consumer, event_ids=done)
            )
            soak.acknowledged += len(acked.acknowledged)


async def _sample(dsn: str, soak: Soak, stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            row = await conn.fetchrow(SAMPLE_SQL)
            if row is not None:
                soak.samples.append(
                    {
                        "t": round(time.monotonic() - soak.started, 1),
                        "enqueued": soak.enqueued,
                        "acknowledged": soak.acknowledged,
                        **{k: v for k, v in row.items() if k != "indexes"},
                        "indexes": dict(json.loads(row["indexes"] or "{}")),
                    }
                )
            try:
                async with asyncio.timeout(SAMPLE_SECONDS):
                    await stop.wait()
                return
            except TimeoutError:
                continue
    finally:
        await conn.close()


async def _warm_rate(address: str) -> float:
    """Messages per second the pipeline takes here, from a short run."""
    from bench_queue import server_pipeline

    return (await server_pipeline(address, 20 * BATCH, "dequeue")).rate


async def soak_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The soak against this tree's server, or with --soak-ref against the server of
    that commit (run from a temporary checkout, on this database all the same)."""
    total = int(getattr(args, "soak_messages", 3_000_000))
    total -= total % BATCH
    ref = getattr(args, "soak_ref", None)
    if ref:
        from bench_queue import checkout

        with checkout(ref) as tree:
            return await _soak(args, total, tree, f"server at {ref}")
    return await _soak(args, total, ROOT, "this server")


async def _soak(
    args: argparse.Namespace, total: int, root: Path, label: str
) -> list[dict[str, Any]]:
    async with server_process("postgres", args.dsn, root=root) as address:
        rate = float(getattr(args, "soak_rate", 0)) or 0.5 * await _warm_rate(address)
        name = f"soak-{uuid.uuid4().hex[:8]}"
        channels = [grpc.aio.insecure_channel(address) for _ in range(PRODUCERS + CONSUMERS)]
        stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
        soak = Soak(started=time.monotonic())
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(args.dsn, soak, stop))
        try:
            await asyncio.gather(
                *(_produce(stubs[i], name, soak, total, rate) for i in range(PRODUCERS)),
                *(_consume(stubs[PRODUCERS + i], name, i, soak, total) for i in range(CONSUMERS)),
            )
        finally:
            soak.ended = time.monotonic()
            stop.set()
            await sampler
            for channel in channels:
                await channel.close()
    return _rows(soak, rate, label)


def _minute(soak: Soak, first: bool) -> list[tuple[float, float, int]]:
    """The dequeues of the first minute, or of the last minute before the queue
    ran dry (the tail of a run only mops up the leases left to run out)."""
    if not soak.dequeues:
        return []
    if first:
        edge = soak.dequeues[0][0] + 60
        return [d for d in soak.dequeues if d[0] < edge]
    edge = soak.dequeues[-1][0] - 60
    return [d for d in soak.dequeues if d[0] >= edge]


def _rows(soak: Soak, rate: float, label: str) -> list[dict[str, Any]]:
    seconds = soak.ended - soak.started
    first, last = _minute(soak, True), _minute(soak, False)
    start = soak.samples[0] if soak.samples else {}
    end = soak.samples[-1] if soak.samples else {}
    peak = max(soak.samples, key=lambda s: s["table_bytes"] + s["index_bytes"], default={})
    dead_peak = max((s["dead"] for s in soak.samples), default=0)
    rows = []
    for period, minute in (("first minute", first), ("last minute", last)):
        latencies = [seconds for _, seconds, _ in minute]
        rows.append(
            Result(
                f"soak ({label}): Dequeue of up to 100, {period}",
                "postgres",
                sum(count for _, _, count in minute) / 60,
                percentile(latencies, 0.5) * 1000,
                percentile(latencies, 0.99) * 1000,
                notes=f"{len(minute)} dequeues (events/s: messages dequeued per second)",
            ).as_dict()
        )
    mib = 1024 * 1024
    rows.append(
        Result(
            f"soak ({label}): whole run",
            "postgres",
            soak.acknowledged / seconds,
            notes=(
                f"{soak.enqueued:,} enqueued at {rate:.0f}/s target, "
                f"{soak.acknowledged:,} acknowledged in {seconds:.0f} s; "
                f"table {start.get('table_bytes', 0) / mib:.1f} -> "
                f"peak {peak.get('table_bytes', 0) / mib:.1f} -> "
                f"end {end.get('table_bytes', 0) / mib:.1f} MiB, "
                f"indexes {start.get('index_bytes', 0) / mib:.1f} -> "
                f"peak {peak.get('index_bytes', 0) / mib:.1f} -> "
                f"end {end.get('index_bytes', 0) / mib:.1f} MiB, "
                f"dead tuples peak {dead_peak:,} end {end.get('dead', 0):,}, "
                f"autovacuums {end.get('autovacuums', 0)}, "
                f"vacuums by the service {end.get('vacuums', 0)}"
            ),
            extra={"samples": soak.samples},
        ).as_dict()
    )
    return rows

"""Benchmark: work-queue throughput through gRPC. Reported, never asserted.

Scenarios (--scenarios, comma-separated; scripts/bench.py runs ``drain``):

drain
    4 producers enqueue the messages in batches of 100, then 4 consumers drain the
    queue, each dequeuing up to 100 messages at a time and acknowledging each batch
    in one call; on both backends, next to a raw asyncpg baseline doing the same
    queue work in plain SQL against the same database and schema (an INSERT of the
    batch, an UPDATE ... FOR UPDATE SKIP LOCKED lease of the 100 oldest visible
    rows, a DELETE of the batch). Enqueue, drain and end-to-end rates.

pipeline (PostgreSQL)
    Enqueue -> deliver -> ack with producers and consumers running together (4 and
    4, batches of 100): the rate from the first enqueue to the last ack, and each
    message's latency from its enqueue to its ack. Side by side, in one run:
    ``Consume`` streams (batches of up to 100 per response; acks sent as batches
    arrive, coalesced), ``Dequeue``
    polling (long polls of 100 + one Acknowledge per batch), the same polling
    against *today's* server (``--baseline-ref``, default ``main``: that commit's
    tree run from a temporary directory on a database of its own), and the same
    pipeline on NATS JetStream (pull + ack) and on Redis streams (XREADGROUP +
    XACK) when they answer (scripts/queue_peers.py; the ``bench`` extra).

keys (PostgreSQL)
    The Consume pipeline with every message under one of 1,000 ordering keys,
    against the same pipeline without keys.

soak (PostgreSQL; scripts/queue_soak.py)
    Millions of messages enqueued, leased and acknowledged over minutes: dequeue
    p50/p99 of the first and last minute, table and index sizes, dead tuples.

    python scripts/bench_queue.py                                 # drain, both backends
    python scripts/bench_queue.py --scenarios pipeline,keys --rounds 3
    python scripts/bench_queue.py --scenarios soak --soak-messages 3000000
    python scripts/bench_queue.py --backend postgres --messages 50000 --json

Bounded: a fixed number of messages (20,000 by default, times --scale when run from
scripts/bench.py) in a fixed number of rounds (3); the rounds interleave the
contenders and the median round of each is reported, so one noisy moment on a
shared machine does not decide a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, Result, bench_database, emit, latency_ms, server_process
from queue_peers import Pipeline, Unavailable, nats_pipeline, redis_pipeline, run_pipeline

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

MESSAGES = 20_000
BATCH = 100
PRODUCERS = 4
CONSUMERS = 4
VISIBILITY_SECONDS = 30
ROUNDS = 3
#: A drain that has not finished by then is reported short rather than awaited.
DRAIN_TIMEOUT_SECONDS = 300
PAYLOAD = json.dumps({"order_id": 12345, "customer": "c-42", "total": 99.5, "items": [1, 2, 3]})

RAW_CREATE_QUEUE_SQL = (
    "INSERT INTO event_streaming.streams (stream_name, stream_type) VALUES ($1, 2) "
    "RETURNING stream_id"
)
RAW_ENQUEUE_SQL = """
WITH s AS (
    UPDATE event_streaming.streams SET next_offset = next_offset + cardinality($2::uuid[])
     WHERE stream_id = $1 RETURNING next_offset - cardinality($2::uuid[]) AS first
)
INSERT INTO event_streaming.queue_messages (stream_id, queue_offset, event_id, event_type,
                                            content_type, data_json, metadata, created_at,
                                            visible_at)
SELECT $1, s.first + t.ord - 1, t.id, t.event_type, 'application/json', t.data, '{}',
       clock_timestamp(), clock_timestamp()
  FROM s, unnest($2::uuid[], $3::text[], $4::jsonb[])
       WITH ORDINALITY AS t(id, event_type, data, ord)
"""
# Planned like the server's dequeue (storage/postgres/queue.py): the LIMIT is a
# subquery and the picked offsets go to the UPDATE as an array, so the plan stays an
# ordered index scan whatever the table's statistics say (the database is new).
RAW_DEQUEUE_SQL = """
UPDATE event_streaming.queue_messages m
   SET visible_at = now() + make_interval(secs => $4), delivery_attempts = m.delivery_attempts + 1,
       consumer_id = $2
 WHERE m.stream_id = $1 AND m.queue_offset = ANY (ARRAY(
       SELECT queue_offset FROM event_streaming.queue_messages
        WHERE stream_id = $1 AND visible_at <= now()
        ORDER BY queue_offset LIMIT (SELECT $3::integer)
          FOR UPDATE SKIP LOCKED))
RETURNING m.queue_offset, m.event_id, m.event_type, m.content_type, m.data_json, m.data_bytes,
          m.metadata, m.correlation_id, m.causation_id, m.created_at, m.visible_at,
          m.delivery_attempts
"""
RAW_ACK_SQL = """
DELETE FROM event_streaming.queue_messages
 WHERE stream_id = $1 AND event_id = ANY($2::uuid[]) AND consumer_id = $3
"""


@dataclass
class Run:
    """One pass of the work: enqueue everything, then drain it."""

    enqueue_seconds: float
    drain_seconds: float
    enqueue_latencies: list[float]
    drain_latencies: list[float]
    acknowledged: int

    def rates(self, messages: int) -> tuple[float, float, float]:
        return (
            messages / self.enqueue_seconds,
            messages / self.drain_seconds,
            messages / (self.enqueue_seconds + self.drain_seconds),
        )


async def timed_workers(workers: int, work: Callable[[int], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(work(w) for w in range(workers)))
    return time.perf_counter() - started


async def run_pass(
    messages: int,
    enqueue_batch: Callable[[int], Awaitable[None]],
    dequeue_and_ack: Callable[[int], Awaitable[int]],
) -> Run:
    """Enqueue ``messages`` with PRODUCERS workers, then drain with CONSUMERS."""
    batches = messages // BATCH
    enqueue_latencies: list[float] = []
    drain_latencies: list[float] = []
    acknowledged = 0

    async def produce(worker: int) -> None:
        for _ in range(worker, batches, PRODUCERS):
            t0 = time.perf_counter()
            await enqueue_batch(worker)
            enqueue_latencies.append(time.perf_counter() - t0)

    async def consume(worker: int) -> None:
        nonlocal acknowledged
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while acknowledged < batches * BATCH and time.monotonic() < deadline:
            t0 = time.perf_counter()
            done = await dequeue_and_ack(worker)
            if not done:
                # Another consumer holds the last messages; they will be acked.
                await asyncio.sleep(0.005)
                continue
            drain_latencies.append(time.perf_counter() - t0)
            acknowledged += done

    enqueue_seconds = await timed_workers(PRODUCERS, produce)
    drain_seconds = await timed_workers(CONSUMERS, consume)
    return Run(enqueue_seconds, drain_seconds, enqueue_latencies, drain_latencies, acknowledged)


async def grpc_pass(address: str, messages: int) -> Run:
    name = f"bench-queue-{uuid.uuid4().hex[:10]}"
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(PRODUCERS, CONSUMERS))]
    stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
    data = PAYLOAD.encode()
    request = pb.EnqueueRequest(
        stream_name=name,
        events=[pb.EventData(event_type="OrderPlaced", data=data) for _ in range(BATCH)],
    )

    async def enqueue_batch(worker: int) -> None:
        await stubs[worker].Enqueue(request)

    async def dequeue_and_ack(worker: int) -> int:
        consumer = f"consumer-{worker}"
        reply = await stubs[worker].Dequeue(
            pb.DequeueRequest(
                stream_name=name,
                consumer_id=consumer,
                max_messages=BATCH,
                visibility_timeout={"seconds": VISIBILITY_SECONDS},
            )
        )
        if not reply.messages:
            return 0
        ids = [m.event.event_id for m in reply.messages]
        acked = await stubs[worker].Acknowledge(
            pb.AcknowledgeRequest(stream_name=name, consumer_id=consumer, event_ids=ids)
        )
        return len(acked.acknowledged)

    try:
        return await run_pass(messages, enqueue_batch, dequeue_and_ack)
    finally:
        for channel in channels:
            await channel.close()


async def raw_pass(pool: asyncpg.Pool[Any], messages: int) -> Run:
    stream_id = await pool.fetchval(RAW_CREATE_QUEUE_SQL, f"raw-queue-{uuid.uuid4().hex[:10]}")
    types = ["OrderPlaced"] * BATCH
    data = [PAYLOAD] * BATCH

    async def enqueue_batch(worker: int) -> None:
        ids = [uuid.uuid4() for _ in range(BATCH)]
        await pool.execute(RAW_ENQUEUE_SQL, stream_id, ids, types, data)

    async def dequeue_and_ack(worker: int) -> int:
        consumer = f"consumer-{worker}"
        rows = await pool.fetch(RAW_DEQUEUE_SQL, stream_id, consumer, BATCH, VISIBILITY_SECONDS)
        if not rows:
            return 0
        # Decode like the server does, so the comparison is like for like.
        decoded = [
            (r["event_id"], r["data_json"].encode(), json.loads(r["metadata"])) for r in rows
        ]
        status = await pool.execute(RAW_ACK_SQL, stream_id, [d[0] for d in decoded], consumer)
        return int(status.rsplit(" ", 1)[-1])

    return await run_pass(messages, enqueue_batch, dequeue_and_ack)


def _rows(
    backend: str, messages: int, run: Run, base: Run | None, rounds: int
) -> list[dict[str, Any]]:
    enqueue_rate, drain_rate, end_to_end = run.rates(messages)
    base_rates = base.rates(messages) if base is not None else (None, None, None)
    problem = (
        f"; ACKNOWLEDGED {run.acknowledged} OF {messages}" if run.acknowledged != messages else ""
    )
    enq_p50, enq_p99 = latency_ms(run.enqueue_latencies)
    drain_p50, drain_p99 = latency_ms(run.drain_latencies)
    common = f"{messages} messages, median of {rounds} rounds"
    return [
        Result(
            f"queue: enqueue 100-message batches, {PRODUCERS} producers",
            backend,
            enqueue_rate,
            enq_p50,
            enq_p99,
            base_rates[0],
            notes=common,
        ).as_dict(),
        Result(
            f"queue: dequeue 100 + ack, {CONSUMERS} consumers",
            backend,
            drain_rate,
            drain_p50,
            drain_p99,
            base_rates[1],
            notes=common + "; latency = one dequeue + its ack" + problem,
        ).as_dict(),
        Result(
            "queue: end to end (enqueue, then drain)",
            backend,
            end_to_end,
            None,
            None,
            base_rates[2],
            notes=common + problem,
            extra={
                "enqueue_seconds": run.enqueue_seconds,
                "drain_seconds": run.drain_seconds,
                "baseline_enqueue_seconds": None if base is None else base.enqueue_seconds,
                "baseline_drain_seconds": None if base is None else base.drain_seconds,
            },
        ).as_dict(),
    ]


def median_run(runs: Sequence[Run]) -> Run | None:
    """The run whose end-to-end time is the median: one consistent set of figures."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r.enqueue_seconds + r.drain_seconds)
    return ordered[len(ordered) // 2]


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The benchmark on the database ``args.dsn``; one dict per result row (the
    fields of benchlib.Result). Runs the scenarios of ``args.scenarios`` (drain
    when not given, as scripts/bench.py asks)."""
    messages = int(getattr(args, "messages", 0) or MESSAGES * int(getattr(args, "scale", 1)))
    messages = max(BATCH, messages - messages % BATCH)
    rounds = max(1, int(getattr(args, "rounds", ROUNDS)))
    scenarios = list(getattr(args, "scenarios", ["drain"]))
    rows: list[dict[str, Any]] = []
    if "drain" in scenarios:
        rows += await drain_rows(args, messages, rounds)
    if "pipeline" in scenarios or "keys" in scenarios:
        rows += await pipeline_rows(args, messages, rounds, scenarios)
    if "soak" in scenarios:
        from queue_soak import soak_rows

        rows += await soak_rows(args)
    for row in rows:
        row.pop("ratio", None)
    return rows


async def drain_rows(args: argparse.Namespace, messages: int, rounds: int) -> list[dict[str, Any]]:
    """Enqueue everything, then drain it; gRPC next to raw SQL. Each round runs the
    gRPC pass and then, on PostgreSQL, the raw pass."""
    backends = list(getattr(args, "backends", ["memory", "postgres"]))
    rows: list[dict[str, Any]] = []
    for backend in backends:
        grpc_runs: list[Run] = []
        raw_runs: list[Run] = []
        dsn = args.dsn if backend == "postgres" else ""
        async with server_process(backend, dsn) as address:
            pool = (
                await asyncpg.create_pool(args.dsn, min_size=CONSUMERS, max_size=CONSUMERS)
                if backend == "postgres"
                else None
            )
            try:
                await grpc_pass(address, 10 * BATCH)  # warm up connections and plans
                if pool is not None:
                    await raw_pass(pool, 10 * BATCH)
                for _ in range(rounds):
                    grpc_runs.append(await grpc_pass(address, messages))
                    if pool is not None:
                        raw_runs.append(await raw_pass(pool, messages))
            finally:
                if pool is not None:
                    await pool.close()
        result = median_run(grpc_runs)
        assert result is not None
        rows.extend(_rows(backend, messages, result, median_run(raw_runs), rounds))
    return rows


# -- the pipeline: enqueue -> deliver -> ack, all at once ----------------------------
#: Messages a Consume stream may hold unacknowledged.
OUTSTANDING = 500
#: Ordering keys of the keyed pipeline.
KEYS = 1000
#: How long a Dequeue long poll waits for a message.
WAIT_SECONDS = 0.5


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds) + timestamp.nanos / 1e9


def _requests(name: str, keys: int) -> Callable[[int], pb.EnqueueRequest]:
    """The n-th batch to enqueue; keyed messages take the keys in turn, so a batch
    spreads over BATCH keys and each key's messages come in order."""
    data = PAYLOAD.encode()

    def request(n: int) -> pb.EnqueueRequest:
        return pb.EnqueueRequest(
            stream_name=name,
            events=[
                pb.EventData(
                    event_type="OrderPlaced",
                    data=data,
                    ordering_key=f"key-{(n * BATCH + i) % keys}" if keys else "",
                )
                for i in range(BATCH)
            ],
        )

    return request


async def server_pipeline(address: str, messages: int, mode: str, keys: int = 0) -> Pipeline:
    """The pipeline through a server: ``mode`` "consume" (streams) or "dequeue"
    (long polls of 100 and one Acknowledge per batch)."""
    name = f"bench-pipe-{uuid.uuid4().hex[:10]}"
    channels = [grpc.aio.insecure_channel(address) for _ in range(PRODUCERS + CONSUMERS)]
    stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
    request = _requests(name, keys)
    sent = 0

    async def produce(worker: int) -> None:
        nonlocal sent
        sent += 1
        await stubs[worker].Enqueue(request(sent))

    async def poll(
        worker: int, done: Callable[[list[float]], None], finished: asyncio.Event
    ) -> None:
        stub = stubs[PRODUCERS + worker]
        consumer = f"consumer-{worker}"
        while not finished.is_set():
            reply = await stub.Dequeue(
                pb.DequeueRequest(
                    stream_name=name,
                    consumer_id=consumer,
                    max_messages=BATCH,
                    visibility_timeout={"seconds": VISIBILITY_SECONDS},
                    wait_time={"nanos": int(WAIT_SECONDS * 1e9)},
                )
            )
            if not reply.messages:
                continue
            acked = await stub.Acknowledge(
                pb.AcknowledgeRequest(
                    stream_name=name,
                    consumer_id=consumer,
                    event_ids=[m.event.event_id for m in reply.messages],
                )
            )
            done([_seconds(m.event.timestamp) for m in reply.messages][: len(acked.acknowledged)])

    async def stream(
        worker: int, done: Callable[[list[float]], None], finished: asyncio.Event
    ) -> None:
        outgoing: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()
        outgoing.put_nowait(
            pb.ConsumeRequest(
                start=pb.ConsumeStart(
                    stream_name=name,
                    consumer_id=f"consumer-{worker}",
                    max_outstanding=OUTSTANDING,
                    max_batch=BATCH,
                    visibility_timeout={"seconds": VISIBILITY_SECONDS},
                )
            )
        )

        async def requests() -> AsyncIterator[pb.ConsumeRequest]:
            while (item := await outgoing.get()) is not None:
                yield item

        pending: list[tuple[str, float]] = []
        sent_acks: dict[int, list[float]] = {}
        wake = asyncio.Event()

        async def acker() -> None:
            request_id = 0
            while True:
                await wake.wait()
                wake.clear()
                await asyncio.sleep(0.001)  # let a few more arrive: fewer, larger acks
                batch, pending[:] = pending[:1000], pending[1000:]
                if pending:
                    wake.set()
                if not batch:
                    continue
                request_id += 1
                sent_acks[request_id] = [t for _, t in batch]
                outgoing.put_nowait(
                    pb.ConsumeRequest(
                        ack=pb.ConsumeAck(request_id=request_id, receipts=[r for r, _ in batch])
                    )
                )

        call = stubs[PRODUCERS + worker].Consume(requests())
        acking = asyncio.create_task(acker())
        try:
            async for response in call:
                if response.HasField("batch"):
                    pending.extend(
                        (m.receipt, _seconds(m.event.timestamp)) for m in response.batch.messages
                    )
                    wake.set()
                elif response.HasField("message"):
                    message = response.message
                    pending.append((message.receipt, _seconds(message.event.timestamp)))
                    wake.set()
                else:
                    times = sent_acks.pop(response.result.request_id)
                    done(times[: len(response.result.succeeded)])
                if finished.is_set():
                    break
        finally:
            acking.cancel()
            outgoing.put_nowait(None)
            call.cancel()

    try:
        return await run_pipeline(
            messages, BATCH, PRODUCERS, CONSUMERS, produce, stream if mode == "consume" else poll
        )
    finally:
        for channel in channels:
            await channel.close()


@contextlib.contextmanager
def checkout(ref: str) -> Any:
    """The tree of git ``ref`` in a temporary directory (a server to run as it was)."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as folder:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        yield Path(folder)


def _median(passes: Sequence[Pipeline]) -> Pipeline | None:
    if not passes:
        return None
    return sorted(passes, key=lambda p: p.rate)[len(passes) // 2]


def _pipeline_row(
    scenario: str, run: Pipeline | None, base: Pipeline | None, notes: str
) -> dict[str, Any]:
    if run is None:
        return Result(scenario, "postgres", float("nan"), notes="skipped: " + notes).as_dict()
    p50, p99 = latency_ms(run.latencies)
    problem = "" if run.acknowledged >= run.messages else f"; ACKED {run.acknowledged}"
    return Result(
        scenario,
        "postgres",
        run.rate,
        p50,
        p99,
        None if base is None else base.rate,
        notes=notes + problem,
        extra={"seconds": run.seconds},
    ).as_dict()


async def pipeline_rows(
    args: argparse.Namespace, messages: int, rounds: int, scenarios: Sequence[str]
) -> list[dict[str, Any]]:
    """The pipeline scenarios; the contenders take turns in every round."""
    passes: dict[str, list[Pipeline]] = {}
    skipped: dict[str, str] = {}
    wanted = ["consume", "dequeue"] if "pipeline" in scenarios else ["consume"]
    if "keys" in scenarios:
        wanted.append("keyed")

    def keep(label: str, result: Pipeline) -> None:
        passes.setdefault(label, []).append(result)

    async with server_process("postgres", args.dsn) as address:
        await server_pipeline(address, 10 * BATCH, "consume")  # warm up
        await server_pipeline(address, 10 * BATCH, "dequeue")
        for _ in range(rounds):
            for label in wanted:
                mode = "dequeue" if label == "dequeue" else "consume"
                keep(
                    label,
                    await server_pipeline(address, messages, mode, KEYS if label == "keyed" else 0),
                )
    if "pipeline" in scenarios:
        ref = getattr(args, "baseline_ref", "main")
        async with bench_database() as baseline_dsn:
            with checkout(ref) as tree:
                async with server_process("postgres", baseline_dsn, root=tree) as address:
                    await server_pipeline(address, 10 * BATCH, "dequeue")
                    for _ in range(rounds):
                        keep("today", await server_pipeline(address, messages, "dequeue"))
        body = PAYLOAD.encode()
        for label, peer in (("nats", nats_pipeline), ("redis", redis_pipeline)):
            try:
                for _ in range(rounds):
                    keep(label, await peer(messages, BATCH, PRODUCERS, CONSUMERS, body))
            except Unavailable as exc:
                skipped[label] = str(exc)
    best = {label: _median(runs) for label, runs in passes.items()}
    common = (
        f"{messages} messages, {PRODUCERS} producers, {CONSUMERS} consumers, median of {rounds}"
    )
    rows: list[dict[str, Any]] = []
    if "pipeline" in scenarios:
        ref = getattr(args, "baseline_ref", "main")
        rows += [
            _pipeline_row(
                f"pipeline: Dequeue polling, server at {ref}", best.get("today"), None, common
            ),
            _pipeline_row(
                "pipeline: Dequeue polling (vs server at base)",
                best.get("dequeue"),
                best.get("today"),
                common,
            ),
            _pipeline_row(
                "pipeline: Consume (vs Dequeue at base)",
                best.get("consume"),
                best.get("today"),
                common + f"; max_outstanding {OUTSTANDING}",
            ),
            _pipeline_row(
                "pipeline: Consume (vs NATS JetStream)",
                best.get("consume"),
                best.get("nats"),
                common,
            ),
            _pipeline_row(
                "pipeline: NATS JetStream pull + ack",
                best.get("nats"),
                None,
                skipped.get("nats", common + "; file storage, work-queue retention"),
            ),
            _pipeline_row(
                "pipeline: Redis XREADGROUP + XACK",
                best.get("redis"),
                None,
                skipped.get("redis", common + "; Redis's own persistence settings"),
            ),
        ]
    if "keys" in scenarios:
        rows.append(
            _pipeline_row(
                f"pipeline: Consume, {KEYS:,} ordering keys (vs none)",
                best.get("keyed"),
                best.get("consume"),
                common,
            )
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--backend", choices=["memory", "postgres", "both"], default="both")
    parser.add_argument(
        "--messages", type=int, default=MESSAGES, help=f"messages per pass (default {MESSAGES})"
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"passes per backend (default {ROUNDS})"
    )
    parser.add_argument(
        "--scenarios",
        default="drain",
        help="comma-separated: drain, pipeline, keys, soak (default drain)",
    )
    parser.add_argument(
        "--baseline-ref",
        default="main",
        help="git ref of the server the pipeline compares with (default main)",
    )
    parser.add_argument("--soak-messages", type=int, default=3_000_000, help="messages of the soak")
    parser.add_argument(
        "--soak-rate", type=int, default=0, help="soak enqueue rate per second (0: adaptive)"
    )
    parser.add_argument(
        "--soak-ref", default=None, help="git ref of a server to soak instead of this one"
    )
    args = parser.parse_args(argv)
    args.backends = ["memory", "postgres"] if args.backend == "both" else [args.backend]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for scenario in args.scenarios:
        if scenario not in ("drain", "pipeline", "keys", "soak"):
            parser.error(f"unknown scenario {scenario!r}")
    return args


async def _standalone(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with bench_database() as dsn:
        return await run(argparse.Namespace(**vars(args), dsn=dsn))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(_standalone(args))
    emit([Result(**row) for row in rows], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

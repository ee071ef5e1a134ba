"""Benchmark: single-event write throughput, the service beside what a user could
pick instead, all in one run on one machine.

Rows (PostgreSQL unless said; 64 concurrent writers unless said):

- unary AppendToStream, 1 event, on the memory backend and on PostgreSQL;
- AppendSession, 1 event per request: SESSIONS sessions, each keeping up to WINDOW
  requests unanswered;
- raw asyncpg, one transaction per event, as the service writes (the head of the
  global log taken last and held to commit), and without it (positions from a
  sequence: what a log without gap-safe global order would do);
- NATS JetStream publish + ack (64 tasks, a file-backed stream), when a server is
  reachable at 127.0.0.1:4222 and nats-py is installed (the ``bench`` extra); the
  table says so when it is not.

Each round runs every row once, in the same order; the median round of each is
reported, and every ratio is taken against rows of the same run.

    python scripts/bench.py --suite throughput --backend postgres
    python scripts/bench_throughput.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PAYLOAD, RAW_APPEND_GLOBAL_SQL, RAW_CREATE_STREAM_SQL, event_data, grpc_appends
from benchlib import Result, bench_database, emit, latency_ms, server_process

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

WRITERS = 64
SESSIONS = 8
WINDOW = 500
EVENTS = 20_000
ROUNDS = 3
NATS_URL = "nats://127.0.0.1:4222"

# A plain append without the global log's head: positions from a sequence.
RAW_APPEND_SEQUENCE_SQL = """
WITH s AS (
    UPDATE event_streaming.streams SET next_offset = next_offset + 1
     WHERE stream_id = $1 RETURNING next_offset - 1 AS first
)
INSERT INTO event_streaming.events (stream_id, stream_offset, event_id, event_type,
                                    content_type, data_json, metadata, created_at,
                                    global_position)
SELECT $1, s.first, $2, 'OrderPlaced', 'application/json', $3::jsonb, '{}',
       clock_timestamp(), nextval('bench_raw_position')
  FROM s
"""


async def timed(
    workers: int, total: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """``total`` calls of ``one(worker)`` spread over ``workers`` tasks."""
    latencies: list[float] = []
    per_worker = total // workers

    async def worker(w: int) -> None:
        for _ in range(per_worker):
            t0 = time.perf_counter()
            await one(w)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return time.perf_counter() - started, latencies


async def session_appends(
    address: str, sessions: int, total: int, window: int
) -> tuple[float, list[float]]:
    """``total`` single-event requests over ``sessions`` AppendSessions, each on a
    channel of its own, with at most ``window`` unanswered per session."""
    prefix = uuid.uuid4().hex[:8]
    per_session = total // sessions
    latencies: list[float] = []
    failures = 0

    async def one_session(s: int) -> None:
        nonlocal failures
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.EventStreamingStub(channel).AppendSession()
            free = asyncio.Semaphore(window)
            sent: dict[int, float] = {}
            requests = [
                pb.AppendSessionRequest(
                    request_id=i,
                    request=pb.AppendToStreamsRequest(
                        appends=[
                            pb.StreamAppend(
                                stream_name=f"session-{prefix}-{s}-{i % 16}",
                                events=event_data(1),
                            )
                        ]
                    ),
                )
                for i in range(per_session)
            ]

            async def write() -> None:
                for request in requests:
                    await free.acquire()
                    sent[request.request_id] = time.perf_counter()
                    await call.write(request)
                await call.done_writing()

            writer = asyncio.create_task(write())
            for _ in range(per_session):
                answer = await call.read()
                if answer.WhichOneof("outcome") != "result":
                    failures += 1
                latencies.append(time.perf_counter() - sent.pop(answer.request_id))
                free.release()
            await writer

    started = time.perf_counter()
    await asyncio.gather(*(one_session(s) for s in range(sessions)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} session requests failed")
    return elapsed, latencies


async def raw_single(
    pool: asyncpg.Pool[Any], total: int, *, head: bool
) -> tuple[float, list[float]]:
    """One transaction per event, 64 writers, each on a stream of its own."""
    prefix = uuid.uuid4().hex[:8]
    stream_ids = [
        await pool.fetchval(RAW_CREATE_STREAM_SQL, f"raw-{prefix}-{w}") for w in range(WRITERS)
    ]

    async def with_head(w: int) -> None:
        await pool.execute(
            RAW_APPEND_GLOBAL_SQL, stream_ids[w], [uuid.uuid4()], ["OrderPlaced"], [PAYLOAD]
        )

    async def with_sequence(w: int) -> None:
        await pool.execute(RAW_APPEND_SEQUENCE_SQL, stream_ids[w], uuid.uuid4(), PAYLOAD)

    return await timed(WRITERS, total, with_head if head else with_sequence)


async def nats_publish(total: int) -> tuple[float, list[float]] | str:
    """JetStream publish + ack from 64 tasks; a reason when it cannot be measured."""
    try:
        import nats  # type: ignore[import-not-found]
    except ImportError:
        return "not measured: nats-py is not installed (pip install -e '.[bench]')"
    try:
        client = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception as exc:
        return f"not measured: no NATS server at {NATS_URL} ({type(exc).__name__})"
    name = f"BENCH_{uuid.uuid4().hex[:8].upper()}"
    try:
        stream = client.jetstream()
        await stream.add_stream(name=name, subjects=[f"{name}.>"])
        payload = PAYLOAD.encode()

        async def one(w: int) -> None:
            await stream.publish(f"{name}.{w}", payload)

        await timed(8, 400, one)  # warm up
        return await timed(WRITERS, total, one)
    finally:
        try:
            await client.jetstream().delete_stream(name)
        finally:
            await client.close()


async def one_round(address: dict[str, str], pool: asyncpg.Pool[Any], events: int) -> list[Result]:
    rows: list[Result] = []

    def add(scenario: str, backend: str, outcome: tuple[float, list[float]], notes: str) -> None:
        elapsed, latencies = outcome
        p50, p99 = latency_ms(latencies)
        rows.append(Result(scenario, backend, events / elapsed, p50, p99, notes=notes))

    per_writer = events // WRITERS
    for backend in ("memory", "postgres"):
        add(
            "unary AppendToStream, 1 event",
            backend,
            await grpc_appends(address[backend], WRITERS, per_writer, 1),
            f"{WRITERS} writers",
        )
    add(
        "AppendSession, 1 event per request",
        "postgres",
        await session_appends(address["postgres"], SESSIONS, events, WINDOW),
        f"{SESSIONS} sessions x {WINDOW} in flight",
    )
    add(
        "raw: 1 tx per event, head of the log held",
        "postgres",
        await raw_single(pool, events, head=True),
        f"{WRITERS} writers, as the service writes",
    )
    add(
        "raw: 1 tx per event, positions from a sequence",
        "postgres",
        await raw_single(pool, events, head=False),
        f"{WRITERS} writers, not gap-safe",
    )
    nats = await nats_publish(events)
    if isinstance(nats, str):
        rows.append(Result("NATS JetStream publish + ack", "nats", 0.0, notes=nats))
    else:
        add("NATS JetStream publish + ack", "nats", nats, f"{WRITERS} tasks, file storage")
    return rows


async def run(args: argparse.Namespace) -> list[Result]:
    """The rounds on ``args.dsn``; the median round of each row, with ratios
    against the same run's rows."""
    events = int(getattr(args, "events", 0) or EVENTS * int(getattr(args, "scale", 1)))
    rounds = max(1, int(getattr(args, "rounds", ROUNDS)))
    runs: list[list[Result]] = []
    async with (
        server_process("memory") as memory,
        server_process("postgres", args.dsn) as postgres,
    ):
        address = {"memory": memory, "postgres": postgres}
        pool = await asyncpg.create_pool(args.dsn, min_size=WRITERS, max_size=WRITERS)
        try:
            await pool.execute(
                "CREATE SEQUENCE IF NOT EXISTS bench_raw_position START 1000000000000"
            )
            await grpc_appends(postgres, 8, 5, 1)  # warm up connections and plans
            for _ in range(rounds):
                runs.append(await one_round(address, pool, events))
        finally:
            await pool.close()
    results: list[Result] = []
    for i in range(len(runs[0])):
        ordered = sorted((run[i] for run in runs), key=lambda r: r.events_per_s)
        median = ordered[len(ordered) // 2]
        median.notes = f"{median.notes} (median of {len(ordered)})"
        median.extra["rounds"] = [round(r.events_per_s) for r in runs_of(runs, i)]
        results.append(median)
    return with_ratios(results)


def runs_of(runs: list[list[Result]], i: int) -> list[Result]:
    return [run[i] for run in runs]


def with_ratios(results: list[Result]) -> list[Result]:
    """The ratios the targets are stated in, as notes."""
    by_name = {(r.scenario, r.backend): r.events_per_s for r in results}
    memory = by_name[("unary AppendToStream, 1 event", "memory")]
    raw = by_name[("raw: 1 tx per event, positions from a sequence", "postgres")]
    raw_head = by_name[("raw: 1 tx per event, head of the log held", "postgres")]
    nats = by_name.get(("NATS JetStream publish + ack", "nats")) or None
    for r in results:
        if r.backend != "postgres" or r.scenario.startswith("raw"):
            continue
        ratios = [f"{r.events_per_s / raw:.2f}x raw", f"{r.events_per_s / raw_head:.2f}x raw+head"]
        if r.scenario.startswith("unary"):
            ratios.insert(0, f"{r.events_per_s / memory:.2f}x memory")
        if nats:
            ratios.append(f"{r.events_per_s / nats:.2f}x NATS")
        r.notes = f"{r.notes}; {', '.join(ratios)}"
    return results


async def main_async(args: argparse.Namespace) -> list[Result]:
    async with bench_database() as dsn:
        return await run(argparse.Namespace(**vars(args), dsn=dsn))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--events", type=int, default=EVENTS, help="events per row per round")
    args = parser.parse_args()
    emit(asyncio.run(main_async(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

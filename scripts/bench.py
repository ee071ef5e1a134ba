"""Benchmark: throughput and latency through gRPC on both backends, next to a raw
asyncpg baseline doing the same work against the same schema in the same run.

    python scripts/bench.py                 # log scenarios, both backends, a table
    python scripts/bench.py --json          # machine-readable
    python scripts/bench.py --suite log,queue,subscriptions --backend postgres
    python scripts/bench.py --workers 2     # WORKERS=2 against WORKERS=1, alternating

Not a test: it asserts nothing. Bounded: every scenario has a fixed amount of work.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    ROOT,
    Result,
    bench_database,
    cpu_seconds,
    emit,
    latency_ms,
    postgres_pids,
    process_tree,
    server_process,
    started_server,
)

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

PAYLOAD = json.dumps({"order_id": 12345, "customer": "c-42", "total": 99.5, "items": [1, 2, 3]})
#: Channels the writers take turns on; channels to one address share one TCP
#: connection unless each has its own subchannel pool (``connections``).
CHANNELS = 4
#: Each channel with a connection of its own.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

RAW_APPEND_SQL = """
WITH s AS (
    UPDATE event_streaming.streams SET next_offset = next_offset + cardinality($2::uuid[])
     WHERE stream_id = $1 RETURNING next_offset - cardinality($2::uuid[]) AS first
)
INSERT INTO event_streaming.events (stream_id, stream_offset, event_id, event_type,
                                    content_type, data_json, metadata, created_at)
SELECT $1, s.first + t.ord - 1, t.id, t.event_type, 'application/json', t.data, '{}',
       clock_timestamp()
  FROM s, unnest($2::uuid[], $3::text[], $4::jsonb[])
       WITH ORDINALITY AS t(id, event_type, data, ord)
"""
# The same with the global log's positions (schema 005 on): the head row taken last
# and held to commit, as the service does.
RAW_APPEND_GLOBAL_SQL = """
WITH s AS (
    UPDATE event_streaming.streams SET next_offset = next_offset + cardinality($2::uuid[])
     WHERE stream_id = $1 RETURNING next_offset - cardinality($2::uuid[]) AS first
), h AS (
    UPDATE event_streaming.log_head SET last_position = last_position + cardinality($2::uuid[])
    RETURNING last_position - cardinality($2::uuid[]) AS base
)
INSERT INTO event_streaming.events (stream_id, stream_offset, event_id, event_type,
                                    content_type, data_json, metadata, created_at,
                                    global_position)
SELECT $1, s.first + t.ord - 1, t.id, t.event_type, 'application/json', t.data, '{}',
       clock_timestamp(), h.base + t.ord
  FROM s, h, unnest($2::uuid[], $3::text[], $4::jsonb[])
       WITH ORDINALITY AS t(id, event_type, data, ord)
"""
RAW_CREATE_STREAM_SQL = (
    "INSERT INTO event_streaming.streams (stream_name, stream_type) VALUES ($1, 1) "
    "RETURNING stream_id"
)
RAW_READ_ALL_SQL = """
SELECT e.global_position, e.stream_offset, s.stream_name, e.event_id, e.event_type,
       e.content_type, e.data_json, e.data_bytes, e.metadata, e.correlation_id,
       e.causation_id, e.created_at
  FROM event_streaming.events e JOIN event_streaming.streams s ON s.stream_id = e.stream_id
 WHERE e.global_position >= $1
 ORDER BY e.global_position LIMIT $2
"""
RAW_READ_SQL = """
SELECT stream_offset, event_id, event_type, content_type, data_json, data_bytes, metadata,
       correlation_id, causation_id, created_at
  FROM event_streaming.events WHERE stream_id = $1 AND stream_offset >= $2
 ORDER BY stream_offset LIMIT $3
"""


def event_data(count: int) -> list[pb.EventData]:
    return [pb.EventData(event_type="OrderPlaced", data=PAYLOAD.encode()) for _ in range(count)]


async def run_workers(
    workers: int, per_worker: int, one: Callable[[int, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``one(worker, i)`` per_worker times in each of ``workers`` tasks; returns
    elapsed seconds and per-call latencies."""
    latencies: list[float] = []

    async def worker(w: int) -> None:
        for i in range(per_worker):
            started = time.perf_counter()
            await one(w, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return time.perf_counter() - started, latencies


async def grpc_appends(
    address: str, workers: int, per_worker: int, batch: int, *, connections: int = 0
) -> tuple[float, list[float]]:
    """``workers`` writers appending ``batch`` events per call, over CHANNELS
    channels (one connection), or over ``connections`` connections when given."""
    if connections:
        channels = [
            grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(connections)
        ]
    else:
        channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
    prefix = uuid.uuid4().hex[:8]
    requests = [
        pb.AppendToStreamRequest(stream_name=f"bench-{prefix}-{w}", events=event_data(batch))
        for w in range(workers)
    ]

    async def one(w: int, i: int) -> None:
        await stubs[w % len(stubs)].AppendToStream(requests[w])

    try:
        return await run_workers(workers, per_worker, one)
    finally:
        for channel in channels:
            await channel.close()


async def raw_appends(
    pool: asyncpg.Pool[Any], workers: int, per_worker: int, batch: int
) -> tuple[float, list[float]]:
    prefix = uuid.uuid4().hex[:8]
    stream_ids = [
        await pool.fetchval(RAW_CREATE_STREAM_SQL, f"raw-{prefix}-{w}") for w in range(workers)
    ]
    types = ["OrderPlaced"] * batch
    data = [PAYLOAD] * batch
    global_log = await pool.fetchval("SELECT to_regclass('event_streaming.log_head') IS NOT NULL")
    sql = RAW_APPEND_GLOBAL_SQL if global_log else RAW_APPEND_SQL

    async def one(w: int, i: int) -> None:
        await pool.execute(sql, stream_ids[w], [uuid.uuid4() for _ in range(batch)], types, data)

    return await run_workers(workers, per_worker, one)


async def populate(address: str, name: str, total: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        batch = pb.AppendToStreamRequest(stream_name=name, events=event_data(500))
        await asyncio.gather(*(stub.AppendToStream(batch) for _ in range(total // 500)))


async def paged_reads(
    address: str, passes: int, read_page: Callable[[Any, int], Awaitable[tuple[int, int, bool]]]
) -> tuple[float, list[float], int]:
    """Page from the start to the end ``passes`` times; ``read_page(stub, at)`` reads
    one page and returns (events, where the next page starts, whether it was the
    last)."""
    rows = 0
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        started = time.perf_counter()
        for _ in range(passes):
            at, last = 0, False
            while not last:
                t0 = time.perf_counter()
                count, at, last = await read_page(stub, at)
                latencies.append(time.perf_counter() - t0)
                rows += count
        return time.perf_counter() - started, latencies, rows


async def grpc_reads(address: str, name: str, passes: int) -> tuple[float, list[float], int]:
    async def read_page(stub: Any, at: int) -> tuple[int, int, bool]:
        page = await stub.ReadStream(
            pb.ReadStreamRequest(stream_name=name, from_offset=at, max_count=1000)
        )
        return len(page.events), page.next_offset, page.end_of_stream

    return await paged_reads(address, passes, read_page)


async def raw_reads(
    pool: asyncpg.Pool[Any], name: str, passes: int
) -> tuple[float, list[float], int]:
    stream_id = await pool.fetchval(
        "SELECT stream_id FROM event_streaming.streams WHERE stream_name = $1", name
    )
    rows = 0
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(passes):
        offset = 0
        while True:
            t0 = time.perf_counter()
            page = await pool.fetch(RAW_READ_SQL, stream_id, offset, 1000)
            # Decode like the server does, so the comparison is like for like.
            decoded = [
                (r["stream_offset"], r["data_json"].encode(), json.loads(r["metadata"]))
                for r in page
            ]
            latencies.append(time.perf_counter() - t0)
            rows += len(decoded)
            if len(page) < 1000:
                break
            offset = page[-1]["stream_offset"] + 1
    return time.perf_counter() - started, latencies, rows


async def grpc_read_all(address: str, passes: int) -> tuple[float, list[float], int]:
    """Page through the whole global log ``passes`` times."""

    async def read_page(stub: Any, at: int) -> tuple[int, int, bool]:
        page = await stub.ReadAll(pb.ReadAllRequest(from_position=at, max_count=1000))
        return len(page.events), page.next_position, page.end_of_log

    return await paged_reads(address, passes, read_page)


async def raw_read_all(pool: asyncpg.Pool[Any], passes: int) -> tuple[float, int]:
    """The same rows with a plain select, decoded as the server decodes them."""
    rows = 0
    started = time.perf_counter()
    for _ in range(passes):
        position = 0
        while True:
            page = await pool.fetch(RAW_READ_ALL_SQL, position, 1000)
            decoded = [
                (r["global_position"], r["data_json"].encode(), json.loads(r["metadata"]))
                for r in page
            ]
            rows += len(decoded)
            if len(page) < 1000:
                break
            position = page[-1]["global_position"] + 1
    return time.perf_counter() - started, rows


async def grpc_multi_appends(
    address: str, workers: int, per_worker: int, *, together: bool
) -> tuple[float, list[float]]:
    """One event to each of two streams per iteration: in one AppendToStreams call
    (``together``), or as two AppendToStream calls one after the other."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
    prefix = uuid.uuid4().hex[:8]
    names = [(f"bench-{prefix}-{w}-a", f"bench-{prefix}-{w}-b") for w in range(workers)]

    async def one(w: int, i: int) -> None:
        stub = stubs[w % CHANNELS]
        if together:
            await stub.AppendToStreams(
                pb.AppendToStreamsRequest(
                    appends=[pb.StreamAppend(stream_name=n, events=event_data(1)) for n in names[w]]
                )
            )
        else:
            for name in names[w]:
                await stub.AppendToStream(
                    pb.AppendToStreamRequest(stream_name=name, events=event_data(1))
                )

    try:
        return await run_workers(workers, per_worker, one)
    finally:
        for channel in channels:
            await channel.close()


async def global_log_scenarios(
    address: str, backend: str, pool: asyncpg.Pool[Any] | None, args: argparse.Namespace, label: str
) -> list[Result]:
    """The global log's scenarios; none on a server without it (an earlier build)."""
    results: list[Result] = []
    try:
        elapsed, lat, rows = await grpc_read_all(address, 2)
    except grpc.aio.AioRpcError as exc:
        # An earlier build: without the RPC, or (before it mapped the generated
        # servicer's NotImplementedError) answering INTERNAL for it.
        if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL):
            return results
        raise
    base = None
    if pool is not None:
        raw_elapsed, raw_rows = await raw_read_all(pool, 2)
        base = raw_rows / raw_elapsed
    p50, p99 = latency_ms(lat)
    results.append(
        Result(
            "read the global log in pages of 1,000",
            backend,
            rows / elapsed,
            p50,
            p99,
            base,
            notes=f"{label + ': ' if label else ''}{rows // 2} events, 2 passes",
        )
    )
    per_worker = max(1, args.scale * 30)
    for together, title in (
        (True, "1 event to each of 2 streams in one AppendToStreams"),
        (False, "the same as 2 AppendToStream calls"),
    ):
        elapsed, lat = await grpc_multi_appends(address, 32, per_worker, together=together)
        p50, p99 = latency_ms(lat)
        rate = 32 * per_worker * 2 / elapsed
        results.append(
            Result(
                title,
                backend,
                rate,
                p50,
                p99,
                notes=f"{label + ': ' if label else ''}32 writers; {1e6 / rate:.0f} us per event",
            )
        )
    return results


async def log_suite(
    backend: str, args: argparse.Namespace, dsn: str, root: Path = ROOT, label: str = ""
) -> list[Result]:
    """The log scenarios against the server of the checkout at ``root``."""
    results: list[Result] = []
    single_per_worker = max(1, args.scale * 60)
    batch_per_worker = max(1, args.scale * 20)
    read_events = args.scale * 50_000
    async with server_process(backend, dsn, root=root) as address:
        pool = (
            await asyncpg.create_pool(dsn, min_size=10, max_size=10)
            if backend == "postgres"
            else None
        )
        try:
            await grpc_appends(address, 8, 5, 1)  # warm up connections and plans
            if pool is not None:
                await raw_appends(pool, 8, 5, 1)

            elapsed, lat = await grpc_appends(address, 64, single_per_worker, 1)
            base = None
            if pool is not None:
                raw_elapsed, _ = await raw_appends(pool, 64, single_per_worker, 1)
                base = 64 * single_per_worker / raw_elapsed
            p50, p99 = latency_ms(lat)
            results.append(
                Result(
                    "append 1 event, 64 concurrent writers",
                    backend,
                    64 * single_per_worker / elapsed,
                    p50,
                    p99,
                    base,
                    notes=label,
                )
            )

            elapsed, lat = await grpc_appends(address, 8, batch_per_worker, 100)
            base = None
            if pool is not None:
                raw_elapsed, _ = await raw_appends(pool, 8, batch_per_worker, 100)
                base = 8 * batch_per_worker * 100 / raw_elapsed
            p50, p99 = latency_ms(lat)
            results.append(
                Result(
                    "append 100-event batches, 8 writers",
                    backend,
                    8 * batch_per_worker * 100 / elapsed,
                    p50,
                    p99,
                    base,
                    notes=label,
                )
            )

            name = f"bench-read-{uuid.uuid4().hex[:8]}"
            await populate(address, name, read_events)
            elapsed, lat, rows = await grpc_reads(address, name, 2)
            base = None
            if pool is not None:
                raw_elapsed, _, raw_rows = await raw_reads(pool, name, 2)
                base = raw_rows / raw_elapsed
            p50, p99 = latency_ms(lat)
            results.append(
                Result(
                    "read pages of 1,000",
                    backend,
                    rows / elapsed,
                    p50,
                    p99,
                    base,
                    notes=f"{label + ': ' if label else ''}{read_events} events, 2 passes",
                )
            )
            results.extend(await global_log_scenarios(address, backend, pool, args, label))
        finally:
            if pool is not None:
                await pool.close()
    return results


SUITES = {
    "log": None,
    "queue": "bench_queue",
    "subscriptions": "bench_subscriptions",
    "throughput": "bench_throughput",
}
#: Writers and connections of the worker comparison.
WORKER_WRITERS = 64
WORKER_CONNECTIONS = 16


#: Appends of the measured phase and the transactions that wrote them.
TRANSACTIONS_SQL = """
SELECT count(*), count(DISTINCT xmin::text) FROM event_streaming.events
 WHERE global_position > $1
"""


async def workers_run(dsn: str, count: int, per_writer: int, label: str) -> Result:
    """Single-event appends by WORKER_WRITERS writers over WORKER_CONNECTIONS
    connections to a server with WORKERS=count, with the CPU time each process
    (the server's, PostgreSQL's, the client's) spent on them, and how many appends
    each transaction carried (group commit)."""
    async with started_server(
        "postgres", dsn, EVENTSTREAMING_WORKERS=str(count), EVENTSTREAMING_LOG_LEVEL="INFO"
    ) as server:
        deadline = time.monotonic() + 60
        while count > 1 and f"all {count} workers serving" not in server.log():
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not all start:\n{server.log()}")
            await asyncio.sleep(0.05)
        address = server.address
        await grpc_appends(address, WORKER_WRITERS, 5, 1, connections=WORKER_CONNECTIONS)
        conn = await asyncpg.connect(dsn)
        try:
            last = await conn.fetchval("SELECT max(global_position) FROM event_streaming.events")
        finally:
            await conn.close()
        pids = process_tree(server.process.pid)
        server_before, pg_before = cpu_seconds(pids), cpu_seconds(postgres_pids())
        client_before = time.process_time()
        elapsed, lat = await grpc_appends(
            address, WORKER_WRITERS, per_writer, 1, connections=WORKER_CONNECTIONS
        )
        client = time.process_time() - client_before
        server_after, pg_after = cpu_seconds(pids), cpu_seconds(postgres_pids())
    conn = await asyncpg.connect(dsn)
    try:
        written, transactions = await conn.fetchrow(TRANSACTIONS_SQL, last)
    finally:
        await conn.close()
    calls = WORKER_WRITERS * per_writer
    used = {pid: server_after[pid] - server_before.get(pid, 0.0) for pid in server_after}
    # The supervisor (first) only waits; the rest are the workers (or the one server).
    serving = [used[pid] for pid in pids[1:] if pid in used] if count > 1 else [used[pids[0]]]
    pg = sum(pg_after[p] - pg_before[p] for p in pg_after if p in pg_before)
    p50, p99 = latency_ms(lat)
    per_call_us = 1e6 / calls
    return Result(
        f"append 1 event, {WORKER_WRITERS} writers, WORKERS={count}",
        "postgres",
        calls / elapsed,
        p50,
        p99,
        notes=(
            f"{label}: CPU per append: server {sum(serving) * per_call_us:.0f} us "
            f"(per process: {', '.join(f'{u / elapsed:.0%}' for u in serving)} of a core), "
            f"PostgreSQL {pg * per_call_us:.0f} us, client {client * per_call_us:.0f} us; "
            f"{written / transactions:.1f} appends per transaction"
        ),
    )


async def workers_suite(args: argparse.Namespace) -> list[Result]:
    """WORKERS=1 against WORKERS=args.workers on the same load, alternating which
    goes first round by round, each on a database of its own; each row of
    WORKERS=N carries the WORKERS=1 figure of its round as its baseline."""
    per_writer = max(1, args.scale * 150)
    results: list[Result] = []
    for round_number in range(1, args.rounds + 1):
        order = [1, args.workers] if round_number % 2 else [args.workers, 1]
        runs: dict[int, Result] = {}
        for count in order:
            async with bench_database() as dsn:
                runs[count] = await workers_run(dsn, count, per_writer, f"round {round_number}")
        runs[args.workers].baseline_events_per_s = runs[1].events_per_s
        results += [runs[1], runs[args.workers]]
    return results


async def compared_log_suite(backend: str, args: argparse.Namespace) -> list[Result]:
    """The log scenarios on this checkout and on ``args.against`` (an earlier
    commit's worktree), alternating round by round, each on a database of its own
    (the two may not share a schema); the median round of each."""
    rounds: dict[str, list[list[Result]]] = {"this": [], "baseline": []}
    for _ in range(args.rounds):
        for label, root in (("this", args.this), ("baseline", args.against)):
            async with bench_database() as dsn:
                rounds[label].append(await log_suite(backend, args, dsn, root, label))
    results: list[Result] = []
    for runs in rounds.values():
        for i in range(len(runs[0])):
            rows = sorted((run[i] for run in runs), key=lambda r: r.events_per_s)
            median = rows[len(rows) // 2]
            median.notes = f"{median.notes} (median of {len(rows)})"
            results.append(median)
    return results


async def main_async(args: argparse.Namespace) -> list[Result]:
    if args.workers:
        return await workers_suite(args)
    results: list[Result] = []
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    async with bench_database() as dsn:
        for suite in suites:
            if suite == "log":
                for backend in args.backends:
                    if args.against is None:
                        results.extend(await log_suite(backend, args, dsn))
                    else:
                        results.extend(await compared_log_suite(backend, args))
                continue
            module = importlib.import_module(SUITES[suite] or suite)
            for row in await module.run(argparse.Namespace(**vars(args), dsn=dsn)):
                results.append(row if isinstance(row, Result) else Result(**row))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--suite", default="log", help=f"comma-separated: {', '.join(SUITES)}")
    parser.add_argument("--backend", choices=["memory", "postgres", "both"], default="both")
    parser.add_argument("--scale", type=int, default=1, help="multiply the amount of work")
    parser.add_argument(
        "--against",
        type=Path,
        help="also run the log suite on the server of this checkout (e.g. `git worktree add "
        "../baseline <commit>`), alternating with this one, for a before/after in one run",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help=f"instead of the suites: single-event appends by {WORKER_WRITERS} writers over "
        f"{WORKER_CONNECTIONS} connections, WORKERS=N against WORKERS=1 (PostgreSQL), "
        "alternating for --rounds rounds; raw/s and ratio are WORKERS=1's figure of the round",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per server with --against or --workers"
    )
    parser.add_argument(
        "--this",
        type=Path,
        default=ROOT,
        help="with --against: the checkout measured as 'this' (default: this one)",
    )
    args = parser.parse_args(argv)
    args.backends = ["memory", "postgres"] if args.backend == "both" else [args.backend]
    if args.workers == 1 or args.workers < 0:
        parser.error("--workers N compares N (2 or more) worker processes with 1")
    for suite in args.suite.split(","):
        if suite.strip() and suite.strip() not in SUITES:
            parser.error(f"unknown suite {suite!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    emit(asyncio.run(main_async(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: megabyte events read by several clients at once, next to a small writer.

A stream of 64 events of 1 MiB each is paged through by 3 readers at once
(``ReadStream`` with ``max_count`` 1000, from the start to the end, again and again)
while one client appends small events one at a time; the writer's latency is
measured with the readers running and alone, and the server's peak memory (VmHWM)
is read at the end. With ``--against DIR`` the same runs on the server of another
checkout (an earlier commit's worktree), for a before/after in one run. PostgreSQL.
Reported, never asserted; bounded: a fixed number of appends per phase.

    python scripts/bench_large_events.py
    git worktree add ../before <commit> && python scripts/bench_large_events.py --against ../before
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, Result, bench_database, emit, latency_ms, started_server

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

BIG_EVENTS = 64
BIG_BYTES = 1024 * 1024
READERS = 3
APPENDS = 400
#: Readers take pages of up to 64 MiB from a server without a byte budget.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def big_event() -> pb.EventData:
    return pb.EventData(event_type="Big", data=b'{"s": "' + b"x" * (BIG_BYTES - 9) + b'"}')


async def write_big(stub: pb_grpc.EventStreamingStub, name: str) -> None:
    for _ in range(BIG_EVENTS):
        await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=[big_event()]))


async def appends(stub: pb_grpc.EventStreamingStub, name: str) -> list[float]:
    """APPENDS small appends one after the other; each one's latency in seconds."""
    latencies = []
    small = pb.AppendToStreamRequest(
        stream_name=name, events=[pb.EventData(event_type="Small", data=b"{}")]
    )
    for _ in range(APPENDS):
        started = time.perf_counter()
        await stub.AppendToStream(small)
        latencies.append(time.perf_counter() - started)
    return latencies


async def read_until(stub: pb_grpc.EventStreamingStub, name: str, done: asyncio.Event) -> int:
    """Page through the stream again and again until ``done``; bytes received."""
    received = 0
    while not done.is_set():
        at, end = 0, False
        while not end:
            page = await stub.ReadStream(
                pb.ReadStreamRequest(stream_name=name, from_offset=at, max_count=1000)
            )
            received += page.ByteSize()
            at, end = page.next_offset, page.end_of_stream
    return received


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_server(root: Path, label: str) -> list[Result]:
    async with (
        bench_database() as dsn,
        started_server("postgres", dsn, root=root) as server,
        grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = pb_grpc.EventStreamingStub(channel)
        await write_big(stub, "big")
        alone = await appends(stub, "small")
        done = asyncio.Event()
        channels = [
            grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS)
            for _ in range(READERS)
        ]
        try:
            readers = [
                asyncio.create_task(read_until(pb_grpc.EventStreamingStub(c), "big", done))
                for c in channels
            ]
            await asyncio.sleep(1.0)  # the readers are under way
            started = time.perf_counter()
            loaded = await appends(stub, "small")
            seconds = time.perf_counter() - started
            done.set()
            received = sum(await asyncio.gather(*readers))
        finally:
            for c in channels:
                await c.close()
        peak = peak_rss_mib(server.process.pid)
    rows = []
    for phase, samples, note in (
        ("alone", alone, ""),
        ("with 3 readers of 1 MiB events", loaded, f"readers got {received / 2**20:,.0f} MiB"),
    ):
        p50, p99 = latency_ms(samples)
        rows.append(
            Result(
                f"small appends, {phase} ({label})",
                "postgres",
                len(samples) / sum(samples),
                p50,
                p99,
                notes=f"{note}; server peak RSS {peak:,.0f} MiB" if note else "",
                extra={"seconds": seconds, "peak_rss_mib": peak},
            )
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="also run the server of this checkout")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = await one_server(ROOT, "this")
    if args.against is not None:
        results += await one_server(args.against.resolve(), "baseline")
    emit(results, args.json)


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: append-to-delivery latency of live subscriptions across replicas.

Two PostgreSQL-backed server processes share one database. Ten subscribers (five
on each server, in two client processes) follow ten streams, one each, while a
paced writer appends single events at 500, 1,000 and 2,000 appends/s, spread over
the streams and, for each stream, over both servers in turn (so half the deliveries
cross servers). Each event carries its send time; a latency sample is the time from
the append being sent to the event arriving (so it includes the append itself).
Each level also runs without subscribers, for the append rate achieved with and
without them; a closed-loop run measures the most appends the two servers take with
and without subscribers, and a fan-out run puts all ten subscribers on one stream.

    python scripts/bench_subscriptions.py            # a table
    python scripts/bench_subscriptions.py --json     # machine-readable
    python scripts/bench_subscriptions.py --duration 5 --rates 500,1000

Bounded: every level runs for ``--duration`` seconds (3 by default) and the whole
benchmark for about a minute. Not a test: it asserts nothing, but it reports
subscribers that missed events or saw them out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Result, bench_database, emit, latency_ms, server_process

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

RATES = (500, 1000, 2000)
SUBSCRIBERS = 10
SERVERS = 2
#: Appends in flight at most (the paced writer's schedule slips beyond it).
MAX_IN_FLIGHT = 256
#: Closed-loop writers for the "most appends" runs.
CLOSED_LOOP_WRITERS = 64
CHANNELS_PER_SERVER = 2
PAYLOAD = json.dumps({"order_id": 12345, "customer": "c-42", "total": 99.5}).encode()
#: A follower of "$all:<prefix>" subscribes to the global log, filtered to the prefix.
ALL_MARK = "$all:"
#: Appends/s of the fan-out run (one stream takes a few hundred at most).
FAN_OUT_RATE = 200
#: How long subscribers may take, after the writer stops, to receive the rest.
DRAIN_SECONDS = 30.0


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) the processes have used so far; 0 where /proc is
    not there to tell."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_pids() -> list[int]:
    """The server processes this process started (Linux; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"server" in command and b"serve" in command:
            found.append(int(entry.name))
    return found


def now() -> float:
    # CLOCK_MONOTONIC is one clock for every process on the machine, so send times
    # written by this process can be compared with arrival times in the workers.
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the subscriber worker (a child process) ------------------------------------------
@dataclass
class Follower:
    """One subscription's progress."""

    stream: str
    received: int = 0
    in_order: bool = True
    last: int = -1
    #: Set on every event, for whoever waits for progress.
    progress: asyncio.Event = field(default_factory=asyncio.Event)


async def _follow(
    stub: pb_grpc.EventStreamingStub,
    server: str,
    state: Follower,
    ready: asyncio.Event,
    latencies: dict[str, list[float]],
) -> None:
    global_log = state.stream.startswith(ALL_MARK)
    call: Any
    if global_log:
        # Every stream under the prefix, through the global log.
        prefix = state.stream[len(ALL_MARK) :]
        call = stub.SubscribeToAll(
            pb.SubscribeToAllRequest(from_end=True, filter=pb.AllFilter(stream_prefixes=[prefix]))
        )
    else:
        call = stub.SubscribeToStream(
            pb.SubscribeToStreamRequest(stream_name=state.stream, from_end=True)
        )
    try:
        async for item in call:
            if item.HasField("caught_up"):
                caught_up = item.caught_up
                state.last = (caught_up.next_position if global_log else caught_up.next_offset) - 1
                ready.set()
                continue
            if global_log and item.HasField("checkpoint"):
                continue
            arrived = now()
            event = item.event
            position = event.global_position if global_log else event.offset
            # Positions of the global log grow; a stream's offsets grow one by one.
            state.in_order = state.in_order and (
                position > state.last if global_log else position == state.last + 1
            )
            state.last = position
            state.received += 1
            state.progress.set()
            sent = event.metadata.get("t")
            if sent:
                where = "local" if event.metadata.get("via") == server else "remote"
                latencies[where].append(arrived - float(sent))
    finally:
        call.cancel()


async def worker(address: str, server: str, streams: list[str]) -> None:
    """Follow each of ``streams`` through the server at ``address`` (number
    ``server``); print READY once all are live, read the events expected per
    stream (a JSON line) from stdin, and print a JSON summary once every
    subscriber has them (or DRAIN_SECONDS later)."""
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float]] = {"local": [], "remote": []}
    states = [Follower(stream) for stream in streams]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        readies = [asyncio.Event() for _ in states]
        tasks = [
            asyncio.create_task(_follow(stub, server, state, ready, latencies))
            for state, ready in zip(states, readies, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
        print("READY", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        expected: dict[str, int] = json.loads(line)
        cpu_started = time.process_time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                for state in states:
                    while state.received < expected[state.stream]:
                        state.progress.clear()
                        await state.progress.wait()
        cpu_used = time.process_time() - cpu_started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps(
            {
                "local": [round(x, 6) for x in latencies["local"]],
                "remote": [round(x, 6) for x in latencies["remote"]],
                "short": sum(1 for s in states if s.received < expected[s.stream]),
                "in_order": all(s.in_order for s in states),
                "cpu_s": round(cpu_used, 3),
            }
        ),
        flush=True,
    )


# -- the benchmark --------------------------------------------------------------------
@dataclass
class Workers:
    processes: list[asyncio.subprocess.Process]

    async def results(self, expected: dict[str, int]) -> list[dict[str, Any]]:
        found = []
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(expected).encode() + b"\n")
            await process.stdin.drain()
        for process in self.processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), DRAIN_SECONDS + 30)
            found.append(json.loads(line))
            await process.wait()
        return found


@contextlib.asynccontextmanager
async def subscribers(
    addresses: Sequence[str], followed: Sequence[Sequence[str]]
) -> AsyncIterator[Workers]:
    """One worker process per server; ``followed[i]`` lists the streams the
    subscribers on server i follow (one subscriber each). Yields once all are live."""
    processes = []
    try:
        for index, (address, streams) in enumerate(zip(addresses, followed, strict=True)):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                address,
                str(index),
                *streams,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            processes.append(process)
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if line.strip() != b"READY":
                raise RuntimeError(f"subscriber worker failed to start: {line!r}")
        yield Workers(processes)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


class Writer:
    """Appends single events: the k-th to stream k mod S, through the servers in
    turn for each stream (so every stream is written through every server)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.channels = [
            [grpc.aio.insecure_channel(address) for _ in range(CHANNELS_PER_SERVER)]
            for address in addresses
        ]
        self.stubs = [[pb_grpc.EventStreamingStub(c) for c in cs] for cs in self.channels]

    async def close(self) -> None:
        for channels in self.channels:
            for channel in channels:
                await channel.close()

    async def append(self, streams: Sequence[str], k: int) -> None:
        server = (k // len(streams)) % len(self.stubs)
        stubs = self.stubs[server]
        event = pb.EventData(
            event_type="OrderPlaced",
            data=PAYLOAD,
            metadata={"t": repr(now()), "via": str(server)},
        )
        await stubs[k % len(stubs)].AppendToStream(
            pb.AppendToStreamRequest(stream_name=streams[k % len(streams)], events=[event])
        )

    async def paced(
        self, streams: Sequence[str], rate: float, duration: float
    ) -> tuple[int, float]:
        """Offer ``rate`` appends/s for ``duration`` s; returns the appends made and
        the time they took (to the last response)."""
        total = int(rate * duration)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: list[asyncio.Task[None]] = []

        async def one(k: int) -> None:
            try:
                await self.append(streams, k)
            finally:
                slots.release()

        started = time.perf_counter()
        for k in range(total):
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
        return total, time.perf_counter() - started

    async def closed_loop(self, streams: Sequence[str], duration: float) -> tuple[int, float]:
        """As many appends as CLOSED_LOOP_WRITERS writers make in ``duration`` s."""
        made = 0
        started = time.perf_counter()
        deadline = started + duration

        async def one_writer() -> None:
            nonlocal made
            while time.perf_counter() < deadline:
                k = made
                made += 1
                await self.append(streams, k)

        await asyncio.gather(*(one_writer() for _ in range(CLOSED_LOOP_WRITERS)))
        return made, time.perf_counter() - started


async def create_streams(writer: Writer, label: str, count: int) -> list[str]:
    prefix = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-{i}" for i in range(count)]
    for name in names:
        await writer.stubs[0][0].AppendToStream(
            pb.AppendToStreamRequest(
                stream_name=name, events=[pb.EventData(event_type="Created", data=b"{}")]
            )
        )
    return names


def expected_per_stream(streams: Sequence[str], appends: int) -> dict[str, int]:
    return {
        name: appends // len(streams) + (1 if i < appends % len(streams) else 0)
        for i, name in enumerate(streams)
    }


def placement(streams: Sequence[str], servers: int, per_stream: int) -> list[list[str]]:
    """Which streams the subscribers on each server follow: subscriber j goes to
    server j mod servers."""
    followed: list[list[str]] = [[] for _ in range(servers)]
    j = 0
    for name in streams:
        for _ in range(per_stream):
            followed[j % servers].append(name)
            j += 1
    return followed


def summarize(found: list[dict[str, Any]]) -> tuple[list[float], list[float], str]:
    local = [x for result in found for x in result["local"]]
    remote = [x for result in found for x in result["remote"]]
    problems = []
    short = sum(result["short"] for result in found)
    if short:
        problems.append(f"{short} subscriber(s) MISSED EVENTS")
    if not all(result["in_order"] for result in found):
        problems.append("OUT OF ORDER")
    return local, remote, "; ".join(problems)


@dataclass(frozen=True)
class Layout:
    """How a scenario spreads appends and subscribers."""

    label: str
    streams: int
    subscribers_per_stream: int
    #: Subscribers follow the global log (filtered to the streams), not a stream each.
    global_log: bool = False

    @property
    def description(self) -> str:
        subs = self.streams * self.subscribers_per_stream
        if self.global_log:
            return f"{subs} $all subscribers on {SERVERS} servers, {self.streams} stream(s)"
        return f"{subs} subscribers on {SERVERS} servers, {self.streams} stream(s)"


#: The main layout: appends spread over ten streams (one stream takes only a few
#: hundred single-event appends/s: its appends serialise on the stream's lock
#: through each commit's WAL flush), one subscriber per stream, alternating servers.
SPREAD = Layout("spread", streams=SUBSCRIBERS, subscribers_per_stream=1)
#: Fan-out: every subscriber follows the same stream.
FAN_OUT = Layout("fan-out", streams=1, subscribers_per_stream=SUBSCRIBERS)
#: The global log: each subscriber follows all ten streams through SubscribeToAll.
GLOBAL = Layout("all", streams=SUBSCRIBERS, subscribers_per_stream=1, global_log=True)


async def scenario(
    writer: Writer,
    addresses: Sequence[str],
    layout: Layout,
    title: str,
    duration: float,
    rate: float | None,
) -> dict[str, Any]:
    """One row: appends with subscribers, and the same appends without them."""

    async def appends(streams: list[str]) -> tuple[int, float]:
        if rate is None:
            return await writer.closed_loop(streams, duration)
        return await writer.paced(streams, rate, duration)

    pids = server_pids()
    alone = await create_streams(writer, f"{layout.label}-alone", layout.streams)
    cpu_before = cpu_seconds(pids)
    count, elapsed = await appends(alone)
    baseline = count / elapsed
    cpu_alone = (cpu_seconds(pids) - cpu_before) / max(count, 1) * 1000

    streams = await create_streams(writer, layout.label, layout.streams)
    if layout.global_log:
        mark = ALL_MARK + streams[0].rsplit("-", 1)[0] + "-"
        followed = placement([mark] * layout.streams, len(addresses), 1)
    else:
        followed = placement(streams, len(addresses), layout.subscribers_per_stream)
    async with subscribers(addresses, followed) as workers:
        cpu_before = cpu_seconds(pids)
        count, elapsed = await appends(streams)
        expected = {mark: count} if layout.global_log else expected_per_stream(streams, count)
        found = await workers.results(expected)
        cpu_followed = (cpu_seconds(pids) - cpu_before) / max(count, 1) * 1000
    local, remote, problems = summarize(found)
    p50, p99 = latency_ms(local + remote)
    remote_p50, remote_p99 = latency_ms(remote)
    client_cpu = sum(result["cpu_s"] for result in found)
    notes = (
        f"{layout.description}; cross-server p99 {remote_p99:.1f} ms; server CPU per "
        f"append {cpu_alone:.2f} ms alone, {cpu_followed:.2f} ms followed"
    )
    return Result(
        title,
        "postgres",
        count / elapsed,
        p50,
        p99,
        baseline,
        notes=notes + (f"; {problems}" if problems else ""),
        extra={
            "offered_per_s": rate,
            "appends": count,
            "deliveries": len(local) + len(remote),
            "cross_server_p50_ms": remote_p50,
            "cross_server_p99_ms": remote_p99,
            "server_cpu_ms_per_append": cpu_followed,
            "server_cpu_ms_per_append_without_subscribers": cpu_alone,
            "subscriber_clients_cpu_s": client_cpu,
            "baseline_is": "appends/s of the same run without subscribers",
        },
    ).as_dict()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The benchmark on the database ``args.dsn``: one dict per result row, with the
    fields of benchlib.Result (baseline_events_per_s: the appends/s of the same
    run without subscribers)."""
    duration = float(getattr(args, "duration", 3.0))
    rates = [int(r) for r in str(getattr(args, "rates", ",".join(map(str, RATES)))).split(",")]
    fan_out_rate = int(getattr(args, "fan_out_rate", FAN_OUT_RATE))
    rows: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        addresses = [
            await stack.enter_async_context(server_process("postgres", args.dsn))
            for _ in range(SERVERS)
        ]
        writer = Writer(addresses)
        stack.push_async_callback(writer.close)
        # Warm up connections, plans and caches.
        await writer.paced(await create_streams(writer, "warm", SUBSCRIBERS), 500, 1.0)
        for rate in rates:
            rows.append(
                await scenario(
                    writer, addresses, SPREAD, f"subscriptions: {rate} appends/s", duration, rate
                )
            )
        rows.append(
            await scenario(
                writer,
                addresses,
                SPREAD,
                f"subscriptions: most appends/s, {CLOSED_LOOP_WRITERS} writers",
                duration,
                None,
            )
        )
        for rate in [int(r) for r in str(getattr(args, "all_rates", "500")).split(",") if r]:
            rows.append(
                await scenario(
                    writer, addresses, GLOBAL, f"SubscribeToAll: {rate} appends/s", duration, rate
                )
            )
        if fan_out_rate:
            rows.append(
                await scenario(
                    writer,
                    addresses,
                    FAN_OUT,
                    f"subscriptions fan-out: {fan_out_rate} appends/s",
                    duration,
                    fan_out_rate,
                )
            )
    for row in rows:
        row.pop("ratio", None)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds of appends per level (default 3)"
    )
    parser.add_argument(
        "--rates",
        default=",".join(map(str, RATES)),
        help="comma-separated offered append rates (default 500,1000,2000)",
    )
    parser.add_argument(
        "--fan-out-rate",
        type=int,
        default=FAN_OUT_RATE,
        help=f"appends/s of the one-stream fan-out run; 0 skips it (default {FAN_OUT_RATE})",
    )
    parser.add_argument(
        "--all-rates",
        default="500",
        help="offered append rates of the SubscribeToAll runs; empty skips them (default 500)",
    )
    return parser.parse_args(argv)


async def _standalone(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with bench_database() as dsn:
        return await run(argparse.Namespace(**vars(args), dsn=dsn))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        asyncio.run(worker(argv[1], argv[2], argv[3:]))
        return 0
    args = parse_args(argv)
    rows = asyncio.run(_standalone(args))
    emit([Result(**row) for row in rows], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

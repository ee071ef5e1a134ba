"""Plumbing shared by the benchmark scripts: a server in a child process, a
throwaway database, latency statistics and the result table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get(
    "EVENTSTREAMING_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Result:
    """One row of the result table."""

    scenario: str
    backend: str
    events_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline_events_per_s: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_events_per_s:
            return None
        return self.events_per_s / self.baseline_events_per_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency_ms(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of samples given in seconds, in milliseconds."""
    return percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'scenario':44} {'backend':9} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'raw/s':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:

        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        print(
            f"{r.scenario:44} {r.backend:9} {r.events_per_s:>10.0f} {num(r.p50_ms, '8.2f')} "
            f"{num(r.p99_ms, '8.2f')} {num(r.baseline_events_per_s, '10.0f')} "
            f"{num(r.ratio, '6.0%')}" + (f"  {r.notes}" if r.notes else "")
        )


def emit(results: Sequence[Result], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print_table(results)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """DSN of a new database, dropped afterwards."""
    name = f"es_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield ADMIN_DSN.rpartition("/")[0] + "/" + name
    finally:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def server_process(
    backend: str, dsn: str = "", root: Path = ROOT, **env: str
) -> AsyncIterator[str]:
    """Run ``python -m server serve`` of the checkout at ``root`` (this one unless
    given) in a child process; yields its address."""
    port = free_port()
    full_env = {
        **os.environ,
        "EVENTSTREAMING_STORAGE": backend,
        "EVENTSTREAMING_HOST": "127.0.0.1",
        "EVENTSTREAMING_PORT": str(port),
        "EVENTSTREAMING_LOG_LEVEL": "WARNING",
        **({"EVENTSTREAMING_DATABASE_URL": dsn} if dsn else {}),
        **env,
    }
    # The server's output, kept in BENCH_SERVER_LOG when set.
    kept = os.environ.get("BENCH_SERVER_LOG")
    log = open(kept, "a+b") if kept else tempfile.TemporaryFile()  # noqa: SIM115, ASYNC230 - closed below
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "server", "serve"], cwd=root, env=full_env, stdout=log, stderr=log
    )
    address = f"127.0.0.1:{port}"
    try:
        await _wait_serving(address, process, log)
        yield address
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


async def _wait_serving(address: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    log.seek(0)
    raise RuntimeError(f"server did not start:\n{log.read().decode(errors='replace')[-3000:]}")

"""Plumbing shared by the benchmark scripts: a server in a child process, a
throwaway database, latency statistics and the result table."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import (
    ROOT,
    ServerProcess,
    create_database,
    drop_database,
    dsn_for,
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


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """DSN of a new database, dropped afterwards (made as the tests make theirs)."""
    name = await create_database()
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


@contextlib.asynccontextmanager
async def started_server(
    backend: str, dsn: str = "", *, root: Path = ROOT, **env: str
) -> AsyncIterator[ServerProcess]:
    """Run ``python -m server serve`` of the checkout at ``root`` in a child process
    (an earlier commit's worktree, to measure it beside this one). Its output is
    kept in the file named by BENCH_SERVER_LOG when set."""
    kept = os.environ.get("BENCH_SERVER_LOG")
    with tempfile.TemporaryDirectory() as folder:
        server = await ServerProcess.start(
            {
                "EVENTSTREAMING_STORAGE": backend,
                "EVENTSTREAMING_LOG_LEVEL": "WARNING",
                **({"EVENTSTREAMING_DATABASE_URL": dsn} if dsn else {}),
                **env,
            },
            Path(kept) if kept else Path(folder) / "server.log",
            root=root,
        )
        try:
            yield server
        finally:
            await server.terminate()


@contextlib.asynccontextmanager
async def server_process(
    backend: str, dsn: str = "", *, root: Path = ROOT, **env: str
) -> AsyncIterator[str]:
    """:func:`started_server`, yielding its address."""
    async with started_server(backend, dsn, root=root, **env) as server:
        yield server.address


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers), from /proc (Linux)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each of ``pids`` (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def postgres_pids() -> list[int]:
    """Every PostgreSQL process of this machine (Linux; others' work included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith("postgres"):
                    found.append(int(entry.name))
    return found

"""Worker processes (WORKERS > 1): the setting, what the supervisor refuses before
binding anything, and, on PostgreSQL, N processes sharing the port: both serve
calls, a killed worker is replaced without losing an acknowledged append, SIGTERM
drains them all, a worker that cannot start stops the supervisor, and workers do
not outlive their supervisor."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.settings import SettingsError, load_settings
from server.workers import MAX_RESTART_DELAY, describe_exit, restart_delay
from tests.support import (
    ROOT,
    ServerProcess,
    TcpProxy,
    append_in_progress,
    clean_env,
    event,
    events,
    free_port,
    read_all,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux"
)

#: Separate TCP connections per channel (channels to one address share one by default).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


def run_cli(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verdicts(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("eventstreaming: ")]


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_records(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON log lines of the supervisor and its workers."""
    records = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def serving_workers(server: ServerProcess) -> dict[int, int]:
    """Worker index -> pid of the latest worker the supervisor saw serving."""
    found: dict[int, int] = {}
    for record in log_records(server):
        message = record.get("message", "")
        if record.get("logger") == "server.workers" and "serving" in message and "pid" in record:
            found[int(record["worker"])] = int(record["pid"])
    return found


def workers_env(dsn: str, count: int = 2, **extra: str) -> dict[str, str]:
    return {
        "EVENTSTREAMING_STORAGE": "postgres",
        "EVENTSTREAMING_DATABASE_URL": dsn,
        "EVENTSTREAMING_WORKERS": str(count),
        "EVENTSTREAMING_LOG_FORMAT": "json",
        **extra,
    }


async def start_workers(env: Mapping[str, str], log_path: Path) -> ServerProcess:
    """A supervisor with its workers, once every worker serves."""
    count = int(env["EVENTSTREAMING_WORKERS"])
    server = await ServerProcess.start(env, log_path)
    try:
        await wait_until(lambda: len(serving_workers(server)) == count, timeout=60, interval=0.05)
    except BaseException:
        server.kill()
        raise
    return server


def own_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(count)]


def metrics_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


# -- pure code --------------------------------------------------------------------------
def test_restart_delay_doubles_up_to_a_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] > 0
    assert all(b == min(2 * a, MAX_RESTART_DELAY) for a, b in itertools.pairwise(delays))
    assert delays[-1] == MAX_RESTART_DELAY
    assert restart_delay(10_000) == MAX_RESTART_DELAY


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(2) == "exited with code 2"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


# -- the setting ------------------------------------------------------------------------
def test_workers_default_to_one(no_settings: None) -> None:
    assert load_settings().workers == 1


@pytest.mark.parametrize("value", ["1", "2", "64"])
def test_workers_from_1_to_64_are_accepted(
    no_settings: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EVENTSTREAMING_WORKERS", value)
    assert load_settings().workers == int(value)


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5"])
def test_workers_out_of_range_name_the_setting(
    no_settings: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EVENTSTREAMING_WORKERS", value)
    with pytest.raises(SettingsError, match=f"EVENTSTREAMING_WORKERS='{value}'"):
        load_settings()


# -- refused before anything is bound ------------------------------------------------------
def test_memory_storage_refuses_more_than_one_worker_before_binding(listening: int) -> None:
    # The port is taken: that the refusal names WORKERS shows it came first.
    env = clean_env(
        EVENTSTREAMING_STORAGE="memory",
        EVENTSTREAMING_WORKERS="2",
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT=str(listening),
    )
    result = run_cli(["serve"], env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = verdicts(result.stderr)
    assert line.startswith("eventstreaming: EVENTSTREAMING_WORKERS: 2 worker processes cannot")
    assert "in-memory storage" in line
    assert "EVENTSTREAMING_STORAGE=postgres" in line


def test_a_taken_port_stops_the_supervisor(listening: int) -> None:
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        # Never reached: the port is checked first.
        EVENTSTREAMING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        EVENTSTREAMING_WORKERS="2",
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT=str(listening),
    )
    result = run_cli(["serve"], env)
    assert result.returncode == 2, result.stderr
    assert verdicts(result.stderr) == [
        f"eventstreaming: EVENTSTREAMING_PORT: 127.0.0.1:{listening} is already in use"
    ]


def test_a_taken_metrics_port_of_a_later_worker_stops_the_supervisor() -> None:
    first = two_free_ports()
    with socket.socket() as taken:  # worker 1's metrics port
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        env = clean_env(
            EVENTSTREAMING_STORAGE="postgres",
            EVENTSTREAMING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
            EVENTSTREAMING_WORKERS="2",
            EVENTSTREAMING_HOST="127.0.0.1",
            EVENTSTREAMING_PORT="0",
            EVENTSTREAMING_METRICS_PORT=str(first),
        )
        result = run_cli(["serve"], env)
    assert result.returncode == 2, result.stderr
    assert verdicts(result.stderr) == [
        f"eventstreaming: EVENTSTREAMING_METRICS_PORT: 127.0.0.1:{first + 1} is already in use "
        "(worker 1's, METRICS_PORT + 1)"
    ]


def two_free_ports() -> int:
    """A port P such that P and P + 1 are free, below the ephemeral range (where
    the tests' own outgoing connections could take one before the server binds)."""
    for _ in range(1000):
        port = random.randrange(20_000, 32_000)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no two free ports in a row")


# -- on PostgreSQL ----------------------------------------------------------------------
@dataclass
class Workers:
    server: ServerProcess
    #: Worker I serves its metrics on metrics_port + I.
    metrics_port: int

    @property
    def address(self) -> str:
        return self.server.address


@pytest_asyncio.fixture(scope="module")
async def running(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Workers]:
    """Two workers with metrics, a short retention interval and a line per call."""
    metrics_port = two_free_ports()
    env = workers_env(
        pg_dsn,
        EVENTSTREAMING_LOG_LEVEL="DEBUG",
        EVENTSTREAMING_METRICS_PORT=str(metrics_port),
        EVENTSTREAMING_RETENTION_INTERVAL_SECONDS="0.2",
    )
    server = await start_workers(env, tmp_path_factory.mktemp("workers") / "server.log")
    try:
        yield Workers(server, metrics_port)
    finally:
        assert await server.terminate() == 0, server.log()


async def test_both_workers_serve_appends_from_many_connections(running: Workers) -> None:
    workers = running.server
    pids = set(serving_workers(workers).values())
    assert children(workers.process.pid) == pids
    streams = [unique_name("workers") for _ in range(8)]
    appended = 0
    served_by: set[int] = set()
    for _ in range(25):  # new connections until both workers have served appends
        channels = own_channels(workers.address, 8)
        try:
            stubs = [pb_grpc.EventStreamingStub(c) for c in channels]
            await asyncio.gather(
                *(
                    stubs[i % len(stubs)].AppendToStream(
                        pb.AppendToStreamRequest(stream_name=name, events=events(1)), timeout=30
                    )
                    for i, name in enumerate(streams * 4)
                )
            )
            appended += len(streams) * 4
        finally:
            for channel in channels:
                await channel.close()
        served_by = {
            int(r["worker"])
            for r in log_records(workers)
            if r.get("logger") == "server.calls"
            and r.get("method") == "AppendToStream"
            and "worker" in r
        }
        if served_by == {0, 1}:
            break
    assert served_by == {0, 1}
    async with grpc.aio.insecure_channel(workers.address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        for name in streams:
            found = await read_all(stub, name)
            assert [e.offset for e in found] == list(range(appended // len(streams)))
    # Each worker counts its own calls on its own metrics port: together, all of them.
    counted = await asyncio.to_thread(
        lambda: sum(
            metrics_value(running.metrics_port + i, "eventstreaming_events_appended_total")
            for i in range(2)
        )
    )
    assert counted == appended


async def test_health_answers_on_the_shared_port(running: Workers) -> None:
    env = clean_env(EVENTSTREAMING_PORT=str(running.server.port))
    result = await asyncio.to_thread(run_cli, ["health"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{running.address}: SERVING"


async def test_retention_is_enforced_with_workers(running: Workers) -> None:
    name = unique_name("retained")
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        await stub.ConfigureStream(
            pb.ConfigureStreamRequest(
                stream_name=name,
                configuration=pb.StreamConfiguration(
                    stream_type=pb.STREAM_TYPE_PERSISTENT, retention_max_count=3
                ),
            )
        )
        await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(10)))

        async def trimmed() -> bool:
            reply = await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name))
            return bool(reply.retained_count == 3 and reply.oldest_offset == 7)

        await wait_until(trimmed, timeout=30)
    records = log_records(running.server)
    assert not [r for r in records if "retention pass failed" in r.get("message", "")]


async def test_a_killed_worker_is_restarted_and_no_acknowledged_append_is_lost(
    pg_dsn: str, tmp_path: Path
) -> None:
    server = await start_workers(workers_env(pg_dsn), tmp_path / "server.log")
    acknowledged: dict[str, list[tuple[int, str]]] = {}
    stop = asyncio.Event()
    channels = own_channels(server.address, 8)
    try:
        before = serving_workers(server)
        victim_index, victim = sorted(before.items())[0]

        async def writer(w: int) -> None:
            stub = pb_grpc.EventStreamingStub(channels[w])
            name = unique_name(f"killed-{w}")
            acknowledged[name] = []
            while not stop.is_set():
                request = pb.AppendToStreamRequest(
                    stream_name=name, events=[event(event_id=str(uuid.uuid4()))]
                )
                for _ in range(200):  # the same ids again until answered: safe to repeat
                    try:
                        reply = await stub.AppendToStream(request, timeout=10)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{name}: no answer after 200 tries")
                acknowledged[name].append((reply.first_offset, request.events[0].event_id))

        def total() -> int:
            return sum(len(v) for v in acknowledged.values())

        writers = [asyncio.create_task(writer(w)) for w in range(len(channels))]
        await wait_until(lambda: total() >= 100, timeout=60)
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: not alive(victim), timeout=10)

        def replaced() -> bool:
            now = serving_workers(server)
            return now.get(victim_index, victim) != victim

        await wait_until(replaced, timeout=60, interval=0.05)
        new = serving_workers(server)[victim_index]
        assert children(server.process.pid) == {
            new,
            *(p for i, p in before.items() if i != victim_index),
        }
        restarted_at = total()
        await wait_until(lambda: total() >= restarted_at + 100, timeout=60)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        messages = [r["message"] for r in log_records(server)]
        assert any(
            f"worker {victim_index} (pid {victim}) was killed by SIGKILL" in m for m in messages
        ), messages
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            for name, acked in acknowledged.items():
                stored = {e.offset: e.event_id for e in await read_all(stub, name)}
                for offset, event_id in acked:
                    assert stored.get(offset) == event_id, f"{name}: lost offset {offset}"
                # Retries wrote nothing twice: exactly the acknowledged events, gapless.
                assert sorted(stored) == list(range(len(acked)))
    finally:
        stop.set()
        for channel in channels:
            await channel.close()
        code = await server.terminate()
    assert code == 0, server.log()


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    pg_dsn: str, tmp_path: Path
) -> None:
    grace = 20.0
    server = await start_workers(
        workers_env(pg_dsn, EVENTSTREAMING_SHUTDOWN_GRACE_SECONDS=str(grace)),
        tmp_path / "server.log",
    )
    pids = set(serving_workers(server).values())
    name = unique_name("drained")
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(1)))
            async with append_in_progress(locker, stub, name) as append:
                server.process.send_signal(signal.SIGTERM)
                # Every worker got it and stops taking calls; the append is still on.
                await wait_until(
                    lambda: (
                        sum("shutdown requested" in r["message"] for r in log_records(server)) == 2
                    ),
                    timeout=10,
                )
                assert not append.done()
            result = await asyncio.wait_for(append, grace)
            assert (result.first_offset, result.last_offset) == (1, 2)
        code = await server.terminate(timeout=grace + 30)
    finally:
        await locker.close()
        server.kill()
    assert code == 0, server.log()
    assert not any(alive(pid) for pid in pids)
    assert any(r["message"] == "all workers stopped" for r in log_records(server))


class FirstConnectionOnly(TcpProxy):
    """Forwards the first connection to PostgreSQL (the supervisor's, for the
    migrations), and drops every later one (the workers')."""

    accepted = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.accepted > 1:
            writer.transport.abort()
            return
        await super()._handle(reader, writer)


async def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_message(
    pg_database: str, tmp_path: Path
) -> None:
    proxy = await FirstConnectionOnly().start()
    try:
        env = workers_env(
            proxy.dsn(pg_database),
            EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS="1",
            EVENTSTREAMING_LOG_FORMAT="text",
        )
        server = await ServerProcess.start(env, tmp_path / "server.log", wait=False)
        try:
            code = await wait_until(lambda: server.process.poll() is not None, timeout=60)
        finally:
            server.kill()
        code = server.process.returncode
    finally:
        await proxy.close()
    assert code == 2, server.log()
    output = server.log()
    assert "Traceback" not in output
    assert (
        "eventstreaming: EVENTSTREAMING_DATABASE_URL: cannot connect to PostgreSQL at "
        f"127.0.0.1:{proxy.port}" in output
    ), output
    assert "could not start" in output
    assert not children(server.process.pid)


async def test_workers_stop_when_the_supervisor_is_killed(pg_dsn: str, tmp_path: Path) -> None:
    server = await start_workers(workers_env(pg_dsn), tmp_path / "server.log")
    pids = set(serving_workers(server).values())
    try:
        server.kill()  # SIGKILL: the supervisor passes nothing on
        await wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    gone = [
        r for r in log_records(server) if r["message"] == "the supervisor is gone; shutting down"
    ]
    assert len(gone) == 2

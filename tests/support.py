"""Shared test plumbing: databases, servers in child processes, a proxy that plays
outages, waiting for conditions, and the client side: request builders and calls
every test makes (append, read, queue operations)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
#: The server tests create their databases on (trust auth, user postgres).
ADMIN_DSN = os.environ.get(
    "EVENTSTREAMING_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unique_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


#: Every database the tests and benchmarks make starts with this; no other is dropped.
DATABASE_PREFIX = "es_test_"


async def create_database() -> str:
    """A new empty database; returns its name. Drop it with drop_database()."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    assert name.startswith(DATABASE_PREFIX), "tests drop only databases they made"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the client side ----------------------------------------------------------------------
Stub = pb_grpc.EventStreamingStub


def event(event_type: str = "Tested", payload: Any = None, **fields: Any) -> pb.EventData:
    """EventData with a JSON payload (``{"n": 0}`` unless given)."""
    data = json.dumps({"n": 0} if payload is None else payload).encode()
    return pb.EventData(event_type=event_type, data=data, **fields)


def events(count: int, event_type: str = "Tested") -> list[pb.EventData]:
    return [event(event_type, {"n": i}) for i in range(count)]


async def append(
    stub: Stub, name: str, batch: int | Sequence[pb.EventData] = 1, **fields: Any
) -> pb.AppendToStreamResponse:
    """Append ``batch`` (events, or how many to make) to ``name``; ``fields`` go into
    the request (``expected_last_offset=...``)."""
    written = events(batch) if isinstance(batch, int) else list(batch)
    return await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=name, events=written, **fields)
    )


def wait_until_sync(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll a plain predicate until it returns something truthy (for tests that
    drive child processes synchronously); returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_serving(address: str, timeout: float = 30.0) -> None:
    """Wait until the health service at ``address`` reports SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server at {address} not SERVING within {timeout} s")
            await asyncio.sleep(0.05)


@dataclass
class ServerProcess:
    """A server in a child process (``python -m server serve``)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str],
        log_path: Path,
        *,
        wait: bool = True,
        port: int | None = None,
        root: Path = ROOT,
    ) -> ServerProcess:
        """``python -m server serve`` of the checkout at ``root`` (this one unless
        given: a benchmark runs an earlier commit's server beside this one)."""
        port = port or free_port()
        full_env = {
            **os.environ,
            "EVENTSTREAMING_HOST": "127.0.0.1",
            "EVENTSTREAMING_PORT": str(port),
            **env,
        }
        log_file = log_path.open("ab")
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "server", "serve"],
            cwd=root,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        server = cls(process, port, log_path)
        if wait:
            try:
                await server.wait_serving()
            except BaseException:
                server.kill()
                raise
        return server

    async def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            try:
                await wait_serving(
                    self.address, timeout=min(1.0, max(0.1, deadline - time.monotonic()))
                )
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    break
        raise AssertionError(
            f"server process exited or did not serve (code {self.process.poll()}):\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("server did not exit within its shutdown timeout")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)


@contextlib.contextmanager
def child_process(
    args: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT / "tests"
) -> Iterator[subprocess.Popen[bytes]]:
    """A command in a child process (output discarded), killed at the end if it is
    still running."""
    process = subprocess.Popen(
        list(args), cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def command() -> list[str]:
    """The console script when installed next to this Python, else ``python -m server``."""
    script = Path(sys.executable).parent / "eventstreaming"
    if script.exists():
        return [str(script)]
    found = shutil.which("eventstreaming")
    return [found] if found else [sys.executable, "-m", "server"]


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without its EVENTSTREAMING_* settings, and
    ``variables``: for a child process that sees only the settings a test gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTREAMING_")}
    env.update(variables)
    return env


def stub_for(channel: grpc.aio.Channel) -> pb_grpc.EventStreamingStub:
    return pb_grpc.EventStreamingStub(channel)


def error_info(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata of a rich error status (empty when there is none)."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return dict(info.metadata)
    return {}


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut, to play an outage.

    ``hold()`` keeps new connections waiting (not forwarded) until ``release()``;
    ``cut()`` drops every open connection and refuses new ones until ``restore()``.
    """

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._refusing = False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut(self) -> None:
        self._refusing = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self._refusing = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def read_all(
    stub: pb_grpc.EventStreamingStub, name: str, *, from_offset: int = 0, **options: Any
) -> list[pb.Event]:
    """Every event from ``from_offset`` to the end, paging with next_offset."""
    found: list[pb.Event] = []
    for _ in range(100_000):
        reply = await stub.ReadStream(
            pb.ReadStreamRequest(stream_name=name, from_offset=from_offset, **options)
        )
        found.extend(reply.events)
        assert reply.next_offset >= from_offset, "next_offset went backwards"
        from_offset = reply.next_offset
        if reply.end_of_stream:
            return found
    raise AssertionError("paging did not reach the end")


#: Takes a stream's row lock, which an append to the stream waits for.
LOCK_STREAM_ROW = "SELECT 1 FROM event_streaming.streams WHERE stream_name = $1 FOR UPDATE"
WAITING_ON_A_LOCK = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


@contextlib.asynccontextmanager
async def append_in_progress(
    locker: asyncpg.Connection, stub: Stub, name: str
) -> AsyncIterator[asyncio.Future[pb.AppendToStreamResponse]]:
    """An append of two events to ``name`` (PostgreSQL) held in progress for the
    block: ``locker`` holds the stream's row lock in a transaction, and the append
    waits for it. Yields the append's future once it waits; when the block ends the
    transaction is rolled back and the append goes on."""
    transaction = locker.transaction()
    await transaction.start()
    try:
        # The append blocks on the stream's row lock: it is in progress.
        await locker.execute(LOCK_STREAM_ROW, name)
        append = asyncio.ensure_future(
            stub.AppendToStream(
                pb.AppendToStreamRequest(stream_name=name, events=events(2)), timeout=60
            )
        )
        await wait_until(lambda: locker.fetchval(WAITING_ON_A_LOCK))
        yield append
    finally:
        await transaction.rollback()  # let the append go on


# -- queues -----------------------------------------------------------------------------
def epoch(value: Timestamp) -> float:
    """A timestamp as seconds since the epoch, with its fraction."""
    return value.ToNanoseconds() / 1e9


def seconds(value: float) -> Duration:
    result = Duration()
    result.FromTimedelta(timedelta(seconds=value))
    return result


async def enqueue(stub: Stub, name: str, count: int = 1) -> list[str]:
    reply = await stub.Enqueue(pb.EnqueueRequest(stream_name=name, events=events(count)))
    return list(reply.event_ids)


async def dequeue(
    stub: Stub,
    name: str,
    consumer: str,
    *,
    max_messages: int = 10,
    visibility: float | None = 30.0,
    wait: float = 0.0,
) -> list[pb.QueueMessage]:
    request = pb.DequeueRequest(stream_name=name, consumer_id=consumer, max_messages=max_messages)
    if visibility is not None:
        request.visibility_timeout.CopyFrom(seconds(visibility))
    if wait:
        request.wait_time.CopyFrom(seconds(wait))
    reply = await stub.Dequeue(request, timeout=wait + 30)
    return list(reply.messages)


def ids_of(messages: list[pb.QueueMessage]) -> list[str]:
    return [m.event.event_id for m in messages]


async def ack(stub: Stub, name: str, consumer: str, ids: list[str]) -> pb.AcknowledgeResponse:
    return await stub.Acknowledge(
        pb.AcknowledgeRequest(stream_name=name, consumer_id=consumer, event_ids=ids)
    )


async def nack(
    stub: Stub, name: str, consumer: str, event_id: str, *, delay: float = 0.0, reason: str = ""
) -> None:
    request = pb.NackRequest(
        stream_name=name, consumer_id=consumer, event_id=event_id, reason=reason
    )
    if delay:
        request.delay.CopyFrom(seconds(delay))
    await stub.Nack(request)


async def configure_queue(
    stub: Stub,
    name: str,
    *,
    max_attempts: int = 0,
    visibility: float | None = None,
    dedup_window: float | None = None,
    retry: tuple[float, float, float] | None = None,
) -> pb.StreamConfiguration:
    """Make ``name`` a queue with these settings; ``retry`` is (initial delay, max
    delay, multiplier)."""
    config = pb.StreamConfiguration(
        stream_type=pb.STREAM_TYPE_EPHEMERAL, max_delivery_attempts=max_attempts
    )
    if visibility is not None:
        config.default_visibility_timeout.CopyFrom(seconds(visibility))
    if dedup_window is not None:
        config.deduplication_window.CopyFrom(seconds(dedup_window))
    if retry is not None:
        config.retry_initial_delay.CopyFrom(seconds(retry[0]))
        config.retry_max_delay.CopyFrom(seconds(retry[1]))
        config.retry_multiplier = retry[2]
    reply = await stub.ConfigureStream(
        pb.ConfigureStreamRequest(stream_name=name, configuration=config)
    )
    return reply.configuration


async def dead_letters(stub: Stub, name: str, max_count: int = 0) -> list[pb.DeadLetter]:
    reply = await stub.ListDeadLetters(
        pb.ListDeadLettersRequest(stream_name=name, max_count=max_count)
    )
    return list(reply.dead_letters)


async def metadata(stub: Stub, name: str) -> pb.GetStreamMetadataResponse:
    return await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name))


async def enqueue_ids(stub: Stub, name: str, ids: list[str]) -> list[str]:
    """Enqueue one event per given id (an id may come back after an ack or a redrive)."""
    reply = await stub.Enqueue(
        pb.EnqueueRequest(stream_name=name, events=[event(event_id=i) for i in ids])
    )
    return list(reply.event_ids)


async def extend(
    stub: Stub, name: str, consumer: str, event_id: str, visibility: float
) -> pb.ExtendVisibilityResponse:
    return await stub.ExtendVisibility(
        pb.ExtendVisibilityRequest(
            stream_name=name,
            consumer_id=consumer,
            event_id=event_id,
            visibility_timeout=seconds(visibility),
        )
    )


async def redrive(stub: Stub, name: str, ids: list[str] | None = None) -> int:
    reply = await stub.RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(stream_name=name, event_ids=ids or [])
    )
    return reply.redriven_count


async def lease_ended(message: pb.QueueMessage, margin: float = 0.1) -> None:
    """Wait until the message's lease has run out (by ``margin`` seconds)."""
    await wait_until(lambda: time.time() - margin > epoch(message.visible_until))


class ConsumeClient:
    """One Consume call driven by a test: messages and results arrive on queues of
    their own; requests go out as the test sends them; ``close()`` half-closes."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self._requests: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()
        self.messages: asyncio.Queue[pb.QueueMessage] = asyncio.Queue()
        self.results: asyncio.Queue[pb.ConsumeResult] = asyncio.Queue()
        self.call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._next_request_id = 0

    @classmethod
    async def start(
        cls,
        stub: Stub,
        name: str,
        consumer: str,
        *,
        max_outstanding: int = 10,
        visibility: float | None = 30.0,
    ) -> ConsumeClient:
        client = cls(stub)
        start = pb.ConsumeStart(
            stream_name=name, consumer_id=consumer, max_outstanding=max_outstanding
        )
        if visibility is not None:
            start.visibility_timeout.CopyFrom(seconds(visibility))
        client.send(pb.ConsumeRequest(start=start))
        client.call = stub.Consume(client._outgoing())
        client._reader = asyncio.create_task(client._read())
        return client

    async def _outgoing(self) -> Any:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self.call:
            if response.WhichOneof("kind") == "message":
                self.messages.put_nowait(response.message)
            else:
                self.results.put_nowait(response.result)

    def send(self, request: pb.ConsumeRequest) -> None:
        self._requests.put_nowait(request)

    def request_id(self) -> int:
        self._next_request_id += 1
        return self._next_request_id

    async def receive(self, count: int = 1, timeout: float = 10.0) -> list[pb.QueueMessage]:
        return [await asyncio.wait_for(self.messages.get(), timeout) for _ in range(count)]

    async def ack(
        self, event_ids: Sequence[str] = (), receipts: Sequence[str] = ()
    ) -> pb.ConsumeResult:
        request_id = self.request_id()
        self.send(
            pb.ConsumeRequest(
                ack=pb.ConsumeAck(request_id=request_id, event_ids=event_ids, receipts=receipts)
            )
        )
        return await self.result(request_id)

    async def nack(self, **fields: Any) -> pb.ConsumeResult:
        request_id = self.request_id()
        self.send(pb.ConsumeRequest(nack=pb.ConsumeNack(request_id=request_id, **fields)))
        return await self.result(request_id)

    async def extend(self, **fields: Any) -> pb.ConsumeResult:
        request_id = self.request_id()
        self.send(pb.ConsumeRequest(extend=pb.ConsumeExtend(request_id=request_id, **fields)))
        return await self.result(request_id)

    async def result(self, request_id: int, timeout: float = 10.0) -> pb.ConsumeResult:
        result = await asyncio.wait_for(self.results.get(), timeout)
        assert result.request_id == request_id, "results come in the order sent"
        return result

    async def close(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Half-close and wait for the call to end; its status code."""
        self._requests.put_nowait(None)
        return await self.finished(timeout)

    async def finished(self, timeout: float = 10.0) -> grpc.StatusCode:
        assert self._reader is not None
        # A call cancelled by the test ends its reader with CancelledError.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await asyncio.wait_for(self._reader, timeout)
        code: grpc.StatusCode = await self.call.code()
        return code

    def cancel(self) -> None:
        self.call.cancel()

"""Fixtures: a real server per backend on a free port, and unique stream names.

Every end-to-end test that takes ``stub`` (or ``server``) runs once against the
in-memory backend and once against PostgreSQL (a database made for this run and
dropped at the end); tests of request validation alone take ``memory_stub``, since
a refused request never reaches storage. Without a reachable PostgreSQL the
PostgreSQL half is skipped, with the reason. Tests make their own stream names and
never depend on order.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
import pytest_asyncio

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.settings import Settings
from storage.interface import EventStore
from storage.memory import InMemoryEventStore
from storage.postgres import PostgresEventStore
from tests.support import (
    ADMIN_DSN,
    ROOT,
    TcpProxy,
    create_database,
    drop_database,
    dsn_for,
    unique_name,
)

T = TypeVar("T")


@dataclass
class RunningServer:
    backend: str
    app: EventStreamingServer
    channel: grpc.aio.Channel
    stub: pb_grpc.EventStreamingStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def store(self) -> EventStore:
        assert self.app.store is not None
        return self.app.store

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop(grace=1)


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own, away from the test loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here; None when they can."""

    async def connect() -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        await conn.close()

    try:
        _run_in_thread(connect())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return (
            f"PostgreSQL is not reachable as the test administrator ({type(exc).__name__}: "
            f"{str(exc)[:120]}); start it at 127.0.0.1:5432 with user postgres and trust "
            "authentication, or point EVENTSTREAMING_TEST_DATABASE_URL at one"
        )
    return None


BACKENDS = ["memory", "postgres"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with the reason, every test that needs PostgreSQL when it is not there."""
    names = ("pg_dsn", "pg_database", "pg_server")
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("server", callspec.params.get("store")) if callspec else None
        needs = backend == "postgres" or any(n in getattr(item, "fixturenames", ()) for n in names)
        if needs and (reason := postgres_unavailable()) is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a database made for this run (migrated by the first server)."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = _run_in_thread(create_database())
    try:
        yield name
    finally:
        _run_in_thread(drop_database(name))


@pytest.fixture(scope="session")
def pg_dsn(pg_database: str) -> str:
    return dsn_for(pg_database)


async def start_server(
    settings: Settings, backend: str, store: EventStore | None = None
) -> RunningServer:
    """A server started in this process (on ``store`` when given), with a channel."""
    app = EventStreamingServer(settings, store=store)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return RunningServer(backend, app, channel, pb_grpc.EventStreamingStub(channel))


def server_settings(backend: str, dsn: str = "", **overrides: object) -> Settings:
    values: dict[str, object] = {"storage": backend, "host": "127.0.0.1", "port": 0}
    if backend == "postgres":
        values["database_url"] = dsn
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="session", params=BACKENDS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """A server on each backend, shared by the tests of the run."""
    backend = request.param
    dsn = ""
    if backend == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
    running = await start_server(server_settings(backend, dsn), backend)
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture(scope="session")
async def memory_server() -> AsyncIterator[RunningServer]:
    """An in-memory server, for tests of what happens before storage is reached."""
    running = await start_server(server_settings("memory"), "memory")
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture(scope="session")
async def postgres_store(pg_dsn: str) -> AsyncIterator[PostgresEventStore]:
    """A started PostgreSQL store on the session's database, shared by the tests of
    the run (the storage contract's, and those of PostgreSQL alone)."""
    store = PostgresEventStore(pg_dsn)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture(scope="session")
async def pg_server(pg_dsn: str) -> AsyncIterator[RunningServer]:
    """A PostgreSQL-backed server, for tests that only make sense there."""
    running = await start_server(server_settings("postgres", pg_dsn), "postgres")
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def stub(server: RunningServer) -> pb_grpc.EventStreamingStub:
    return server.stub


@pytest.fixture
def memory_stub(memory_server: RunningServer) -> pb_grpc.EventStreamingStub:
    return memory_server.stub


@pytest.fixture
def stream_name() -> str:
    return unique_name()


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EVENTSTREAMING_* variable and no .env file."""
    for key in list(os.environ):
        if key.startswith("EVENTSTREAMING_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT / "tests")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else listens on (a plain socket held open, no port reuse)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A loopback proxy to PostgreSQL that a test can hold or cut (an outage)."""
    running = await TcpProxy().start()
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture(params=["memory", "postgres"])
async def quiet_server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """A server whose long polls can only be woken by the enqueue itself: the
    in-memory backend has no other wake-up, and PostgreSQL's look for lost
    notifications is put off for an hour."""
    store: EventStore = InMemoryEventStore()
    dsn = ""
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        store = PostgresEventStore(dsn, watch_interval=3600)
    settings = server_settings(request.param, dsn)
    running = await start_server(settings, request.param, store=store)
    try:
        yield running
    finally:
        await running.close()

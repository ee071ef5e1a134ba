"""Fixtures: a real server per backend on a free port, and unique stream names.

Every storage contract test takes ``stub`` and so runs once against the in-memory
backend and once against PostgreSQL (a database made for this run and dropped at
the end). Tests make their own stream names and never depend on order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.settings import Settings
from storage.interface import EventStore
from tests.support import create_database, drop_database, dsn_for, unique_name

BACKENDS = ["memory", "postgres"]
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


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own, away from the test loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a database made for this test run (migrated by the first server)."""
    name = _run_in_thread(create_database())
    try:
        yield name
    finally:
        _run_in_thread(drop_database(name))


@pytest.fixture(scope="session")
def pg_dsn(pg_database: str) -> str:
    return dsn_for(pg_database)


async def _start(settings: Settings, backend: str) -> RunningServer:
    app = EventStreamingServer(settings)
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
    running = await _start(server_settings(backend, dsn), backend)
    try:
        yield running
    finally:
        await running.channel.close()
        await running.app.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def pg_server(pg_dsn: str) -> AsyncIterator[RunningServer]:
    """A PostgreSQL-backed server, for tests that only make sense there."""
    running = await _start(server_settings("postgres", pg_dsn), "postgres")
    try:
        yield running
    finally:
        await running.channel.close()
        await running.app.stop(grace=1)


@pytest.fixture
def stub(server: RunningServer) -> pb_grpc.EventStreamingStub:
    return server.stub


@pytest.fixture
def stream_name() -> str:
    return unique_name()

"""Fixtures of the client's tests: a blocking ``Client`` on a server running in a
background thread (each backend), an ``AsyncClient`` on the suite's in-process
server, and unique names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from eventstreaming_client import AsyncClient, Client
from tests.client import servers
from tests.conftest import BACKENDS, RunningServer


@pytest.fixture(scope="package", autouse=True)
def _close_thread_servers() -> Iterator[None]:
    """Stop the background servers once the client's tests are done (their database
    connections are not held through the rest of the run)."""
    yield
    servers.close_all()


@pytest.fixture(scope="package", params=BACKENDS)
def thread_server(request: pytest.FixtureRequest) -> servers.ThreadServer:
    """A server per backend in a background thread, shared by the client's tests."""
    reason = servers.skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return servers.shared(request.param)


@pytest.fixture
def client(thread_server: servers.ThreadServer) -> Iterator[Client]:
    with Client(thread_server.address) as made:
        yield made


@pytest_asyncio.fixture
async def aclient(server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address) as made:
        yield made

"""The storage contract runs against every backend through one ``store`` fixture.

Each backend's store is made once per test session (PostgreSQL's, postgres_store
of tests/conftest.py, in the session's database, migrated at start), so tests
make their own stream names and never look at what other tests wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from storage.interface import EventStore
from storage.memory import InMemoryEventStore
from tests.contract.backends import BACKENDS


@pytest_asyncio.fixture(scope="session")
async def memory_store() -> AsyncIterator[EventStore]:
    store = InMemoryEventStore()
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> EventStore:
    """The store of one backend, shared by the session's tests on that backend."""
    backend: str = request.param
    found: EventStore = request.getfixturevalue(f"{backend}_store")
    return found

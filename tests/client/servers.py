"""Servers for the client's tests, on an event loop of their own in a background
thread: the blocking client (and eventsourcing, which is synchronous) calls them
from the test's thread while pytest's own loop is idle.

``shared(backend)`` is one server per backend for the whole run; ``fresh(backend)``
is a new server on a new store (in memory, or a PostgreSQL database cloned from a
migrated template), for tests that need an empty global log.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from server.app import EventStreamingServer
from tests.conftest import postgres_unavailable, server_settings
from tests.support import ADMIN_DSN, DATABASE_PREFIX, drop_database, dsn_for

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-servers", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_loop: _LoopThread | None = None
_lock = threading.RLock()


def loop() -> _LoopThread:
    global _loop
    with _lock:
        if _loop is None:
            _loop = _LoopThread()
        return _loop


@dataclass
class ThreadServer:
    backend: str
    app: EventStreamingServer
    database: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def stop(self) -> None:
        loop().run(self.app.stop(grace=0.5))
        if self.database is not None:
            loop().run(drop_database(self.database))
            self.database = None


def _start(backend: str, database: str | None, **overrides: object) -> ThreadServer:
    dsn = dsn_for(database) if database else ""
    settings = server_settings(backend, dsn, **overrides)

    async def start() -> EventStreamingServer:
        app = EventStreamingServer(settings)
        await app.start()
        return app

    return ThreadServer(backend, loop().run(start()), database)


# -- PostgreSQL: a migrated template, cloned per fresh server -------------------------------
_template: str | None = None


def _template_database() -> str:
    global _template
    with _lock:
        if _template is not None:
            return _template
        name = f"{DATABASE_PREFIX}template_{uuid.uuid4().hex[:8]}"

        async def create() -> None:
            conn = await asyncpg.connect(ADMIN_DSN)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        loop().run(create())
        # A server migrates it once; then it is only ever cloned.
        server = _start("postgres", name)
        loop().run(server.app.stop(grace=0))
        _template = name
        return name


def _clone_template() -> str:
    template = _template_database()
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"

    async def clone() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()

    loop().run(clone())
    return name


def skip_reason(backend: str) -> str | None:
    return postgres_unavailable() if backend == "postgres" else None


def fresh(backend: str, **overrides: object) -> ThreadServer:
    """A new server on an empty store; stop() it (which drops its database)."""
    database = _clone_template() if backend == "postgres" else None
    try:
        return _start(backend, database, **overrides)
    except BaseException:
        if database is not None:
            loop().run(drop_database(database))
        raise


_shared: dict[str, ThreadServer] = {}


def shared(backend: str) -> ThreadServer:
    """One server per backend for the whole run (stopped by close_all())."""
    with _lock:
        found = _shared.get(backend)
    if found is not None:
        return found
    # A small pool: the database is shared with the rest of the suite (and its
    # max_connections with whatever else runs on this PostgreSQL).
    server = fresh(backend, pool_min_size=1, pool_max_size=4)
    with _lock:
        _shared[backend] = server
    return server


def close_all() -> None:
    """Stop the shared servers and drop the template (the end of the run)."""
    global _template, _loop
    with _lock:
        servers = list(_shared.values())
        _shared.clear()
        template, _template = _template, None
    for server in servers:
        server.stop()
    if template is not None:
        loop().run(drop_database(template))
    if _loop is not None:
        _loop.loop.call_soon_threadsafe(_loop.loop.stop)
        _loop.thread.join(10)
        _loop = None

"""Connection pool and shared plumbing of the PostgreSQL backend's capabilities."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import asyncpg

from storage.errors import StorageUnavailable
from storage.postgres.connect import ConnectOptions, create_pool
from storage.postgres.notifier import PostgresNotifier
from storage.signals import StreamSignals

log = logging.getLogger(__name__)

SCHEMA = "event_streaming"

#: A connection of our own or one borrowed from the pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


#: Session settings sent when each connection starts, so they are the session's
#: defaults (a RESET ALL keeps them). UTC: now() and interval arithmetic never
#: depend on the server's TimeZone. No JIT: it pays off for long analytical queries,
#: never for this service's short statements, and a misestimated plan crossing
#: jit_above_cost adds tens of milliseconds to a call.
SESSION_SETTINGS = {"timezone": "UTC", "jit": "off"}


async def _keep_session(conn: Connection) -> None:
    """Pool reset on release. asyncpg always rolls back an abandoned transaction
    first; beyond that nothing needs undoing, since no statement of this service
    leaves a SET, LISTEN, cursor or advisory lock behind. (The default reset sends
    four statements on every release: a round trip per call on every hot path.)"""


@contextlib.asynccontextmanager
async def session_advisory_lock(conn: Connection, key: int, *, wait: bool) -> AsyncIterator[bool]:
    """Hold a session-level advisory lock on ``conn`` for the block; yields whether
    it was taken (always True with ``wait``). Should the unlock itself fail, the
    connection is terminated rather than returned to the pool still holding the
    lock (the pool's reset does not release advisory locks)."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        taken = True
    else:
        taken = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
    try:
        yield taken
    finally:
        if taken:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
            except BaseException:
                conn.terminate()
                raise


class PostgresBase:
    """Owns the asyncpg pool. Capability mixins reach the database through
    :attr:`pool` and report committed writes through :meth:`_announce`."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        connect_options: ConnectOptions | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        #: Connect and statement timeouts, and how long start() retries.
        self._connect_options = connect_options or ConnectOptions()
        self._pool: asyncpg.Pool[Any] | None = None
        self.signals = StreamSignals()
        #: Tells the other replicas of committed writes (set while started).
        self._notifier: PostgresNotifier | None = None

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise StorageUnavailable("the PostgreSQL store is not started")
        return self._pool

    async def _open_pool(self) -> None:
        self._pool = await create_pool(
            self._dsn,
            self._connect_options,
            min_size=self._pool_min_size,
            max_size=self._pool_max_size,
            server_settings=SESSION_SETTINGS,
            reset=_keep_session,
        )

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _announce(self, stream_name: str) -> None:
        """Report a committed write to ``stream_name``: wakes local waiters at once,
        and waiters on every other replica within a few milliseconds (the notifier
        batches the names and sends them outside any write's transaction)."""
        self.signals.notify(stream_name)
        if self._notifier is not None:
            self._notifier.announce(stream_name)

    async def _start_notifier(self) -> None:
        self._notifier = PostgresNotifier(self._dsn, self.signals)
        await self._notifier.start()

    async def _stop_notifier(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            await notifier.close()

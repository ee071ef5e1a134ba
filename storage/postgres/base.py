"""Connection pool and shared plumbing of the PostgreSQL backend's capabilities."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import asyncpg

from storage.errors import StorageUnavailable
from storage.postgres.notifier import PostgresNotifier
from storage.signals import StreamSignals

log = logging.getLogger(__name__)

SCHEMA = "event_streaming"

#: A connection of our own or one borrowed from the pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


async def _init_connection(conn: Connection) -> None:
    # Timestamps travel as timestamptz; keep the session in UTC so now() and
    # interval arithmetic never depend on the server's TimeZone setting.
    # JIT compilation pays off for long analytical queries, never for the short
    # statements of this service, and a misestimated plan crossing jit_above_cost
    # adds tens of milliseconds to a call.
    await conn.execute("SET TIME ZONE 'UTC'; SET jit = off")


class PostgresBase:
    """Owns the asyncpg pool. Capability mixins reach the database through
    :attr:`pool` and report committed writes through :meth:`_announce`."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        command_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._command_timeout = command_timeout
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
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._pool_min_size,
            max_size=self._pool_max_size,
            command_timeout=self._command_timeout,
            init=_init_connection,
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

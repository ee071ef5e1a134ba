"""Connection pool and shared plumbing of the PostgreSQL backend's capabilities."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg

from storage.errors import StorageUnavailable
from storage.postgres.connect import ConnectOptions, create_pool
from storage.postgres.database import Database
from storage.postgres.group_commit import GroupCommit
from storage.postgres.notifier import PostgresNotifier
from storage.records import ALL_STREAM, PoolUsage
from storage.rules import DEFAULT_PAGE_BYTES
from storage.signals import StreamSignals

log = logging.getLogger(__name__)

SCHEMA = "event_streaming"

#: Session settings sent when each connection starts, so they are the session's
#: defaults (a RESET ALL keeps them). UTC: now() and interval arithmetic never
#: depend on the server's TimeZone. No JIT: it pays off for long analytical queries,
#: never for this service's short statements, and a misestimated plan crossing
#: jit_above_cost adds tens of milliseconds to a call.
SESSION_SETTINGS = {"timezone": "UTC", "jit": "off"}


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Pool reset on release. asyncpg always rolls back an abandoned transaction
    first; beyond that nothing needs undoing, since no statement of this service
    leaves a SET, LISTEN, cursor or advisory lock behind. (The default reset sends
    four statements on every release: a round trip per call on every hot path.)"""


class LockHolder(Protocol):
    """A connection of ours (a :class:`Session`, or asyncpg's own connection)."""

    async def execute(self, sql: str, *args: Any) -> str: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    def terminate(self) -> None: ...


@contextlib.asynccontextmanager
async def session_advisory_lock(
    session: LockHolder, key: int, *, wait: bool
) -> AsyncIterator[bool]:
    """Hold a session-level advisory lock on ``session`` for the block; yields
    whether it was taken (always True with ``wait``). Should the unlock itself
    fail, the connection is terminated rather than returned to the pool still
    holding the lock (the pool's reset does not release advisory locks)."""
    if wait:
        await session.execute("SELECT pg_advisory_lock($1)", key)
        taken = True
    else:
        taken = bool(await session.fetchval("SELECT pg_try_advisory_lock($1)", key))
    try:
        yield taken
    finally:
        if taken:
            try:
                await session.execute("SELECT pg_advisory_unlock($1)", key)
            except BaseException:
                session.terminate()
                raise


class PostgresBase:
    """Owns the database. Capability mixins reach it through :attr:`db` (which
    raises only storage errors) and report committed writes through
    :meth:`_announce`."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        connect_options: ConnectOptions | None = None,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        watch_interval: float = 1.0,
    ) -> None:
        self._dsn = dsn
        #: Seconds between the notifier's looks at waited streams (lost notifications).
        self._watch_interval = watch_interval
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        #: Connect and statement timeouts, and how long start() retries.
        self._connect_options = connect_options or ConnectOptions()
        #: The byte budget of one response's events (storage.rules.within_budget).
        self.page_bytes = page_bytes
        self._db: Database | None = None
        #: Appends written in groups (made on the first append).
        self._appends: GroupCommit | None = None
        self.signals = StreamSignals()
        #: Tells the other replicas of committed writes (set while started).
        self._notifier: PostgresNotifier | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise StorageUnavailable("the PostgreSQL store is not started")
        return self._db

    def pool_usage(self) -> PoolUsage | None:
        return None if self._db is None else self._db.usage()

    async def _open_pool(self) -> None:
        pool = await create_pool(
            self._dsn,
            self._connect_options,
            min_size=self._pool_min_size,
            max_size=self._pool_max_size,
            server_settings=SESSION_SETTINGS,
            reset=_keep_session,
        )
        self._db = Database(pool)

    async def _close_pool(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def _announce(self, *stream_names: str, log: bool = False) -> None:
        """Report a committed write to ``stream_names`` (and, for a log append, to
        the global log): wakes local waiters at once, and waiters on every other
        replica within a few milliseconds (the notifier batches the names and sends
        them outside any write's transaction)."""
        names = (*stream_names, ALL_STREAM) if log else stream_names
        for name in names:
            self.signals.notify(name)
            if self._notifier is not None:
                self._notifier.announce(name)

    async def _start_notifier(self) -> None:
        self._notifier = PostgresNotifier(
            self._dsn, self.signals, watch_interval=self._watch_interval
        )
        await self._notifier.start()

    async def _stop_notifier(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            await notifier.close()

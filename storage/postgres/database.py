"""The asyncpg pool behind one boundary: every statement of the backend goes through
:class:`Database` (or a :class:`Session` it lends), which raises only storage errors
and never returns a broken connection to the pool.

After a connection-level failure (the server terminated the backend, the socket
died, the protocol was left mid-operation) asyncpg may still hand the connection
out again, and its next user gets an internal client error. Here such a connection
is terminated on the spot, so the pool opens a fresh one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import asyncpg

from storage.postgres.errors import DRIVER_ERRORS, breaks_connection, to_storage_error
from storage.records import PoolUsage

Record = asyncpg.Record
#: A connection of our own or one borrowed from the pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


class Session:
    """One pooled connection, lent for a block (see :meth:`Database.session`)."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        try:
            return await self._conn.fetch(sql, *args)
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        try:
            return await self._conn.fetchrow(sql, *args)
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(sql, *args)
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        try:
            return await self._conn.execute(sql, *args)
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction for the block: committed when it ends, rolled back when it
        raises."""
        transaction = self._conn.transaction()
        try:
            await transaction.start()
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc
        try:
            yield
        except BaseException:
            with contextlib.suppress(*DRIVER_ERRORS):
                await transaction.rollback()
            raise
        try:
            await transaction.commit()
        except DRIVER_ERRORS as exc:
            raise self._failed(exc) from exc

    def terminate(self) -> None:
        """Close the connection at once (it is not returned to the pool)."""
        # Once asyncpg has seen the connection close, the pool already took it
        # back (and will open a new one), and the proxy refuses the call.
        with contextlib.suppress(asyncpg.InterfaceError):
            self._conn.terminate()

    @property
    def connection(self) -> Connection:
        """The asyncpg connection itself, for code that handles asyncpg's errors on
        its own terms (migrations report a failed file by name)."""
        return self._conn

    def _failed(self, exc: BaseException) -> Exception:
        if breaks_connection(exc):
            self.terminate()
        return to_storage_error(exc)


class Database:
    """The pool. Single statements run on a connection of their own; a block that
    needs one connection throughout (a transaction, a session lock) takes a
    :meth:`session`."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        try:
            conn = await self._pool.acquire()
        except DRIVER_ERRORS as exc:
            raise to_storage_error(exc) from exc
        try:
            yield Session(conn)
        finally:
            # A failed release closed (or failed to reset) the connection: the pool
            # replaces it. What the block did is already decided.
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """A session whose block runs in one transaction."""
        async with self.session() as session, session.transaction():
            yield session

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        async with self.session() as session:
            return await session.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        async with self.session() as session:
            return await session.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.session() as session:
            return await session.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.session() as session:
            return await session.execute(sql, *args)

    def usage(self) -> PoolUsage:
        size = self._pool.get_size()
        return PoolUsage(size=size, in_use=size - self._pool.get_idle_size())

    async def close(self) -> None:
        await self._pool.close()

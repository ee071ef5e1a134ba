"""How asyncpg and socket errors become storage errors.

:mod:`storage.postgres.database` applies this at the one boundary every statement
crosses; the notifier, which keeps a connection of its own, uses it too.
"""

from __future__ import annotations

import asyncpg

from storage.errors import StorageError, StorageUnavailable, StreamDeletedDuringCall

#: The connection cannot be trusted any more: lost, terminated by the server, or
#: left mid-protocol by one of these. It is closed, never handed out again.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)

#: Errors after which the same call may well succeed when retried: callers see
#: StorageUnavailable (gRPC UNAVAILABLE).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    TimeoutError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
    # Transient conflicts.
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.exceptions.InternalClientError,
    *UNAVAILABLE_ERRORS,
)


def breaks_connection(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` must be closed, not reused."""
    return isinstance(exc, CONNECTION_ERRORS)


def to_storage_error(exc: BaseException) -> StorageError:
    """The storage error a driver error stands for."""
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        # Every foreign key points at a stream row: a DeleteStream committed while
        # this call was writing to the stream.
        return StreamDeletedDuringCall()
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return StorageUnavailable(
            f"database unavailable or in conflict ({type(exc).__name__}); retry the call"
        )
    return StorageError(f"database error: {type(exc).__name__}")

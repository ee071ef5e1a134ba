"""The one place where asyncpg and socket errors become storage errors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg

from storage.errors import StorageError, StorageUnavailable

P = ParamSpec("P")
T = TypeVar("T")

#: Errors that mean "the database cannot be reached or is going away": callers see
#: StorageUnavailable (gRPC UNAVAILABLE) and may retry.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.InterfaceError,
    # Transient conflicts: the same call succeeds when retried.
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)

DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNAVAILABLE_ERRORS)

TRANSLATED_MARK = "__translates_storage_errors__"


def to_storage_error(exc: BaseException) -> StorageError:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return StorageUnavailable(
            f"database unavailable or in conflict ({type(exc).__name__}); retry the call"
        )
    return StorageError(f"database error: {type(exc).__name__}")


def translates_errors(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap a backend coroutine so it raises only storage errors (``from`` the cause)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except StorageError:
            raise
        except DRIVER_ERRORS as exc:
            raise to_storage_error(exc) from exc

    setattr(wrapper, TRANSLATED_MARK, True)
    return wrapper

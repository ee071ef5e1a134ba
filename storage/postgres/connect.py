"""Reaching PostgreSQL at start-up: the database URL read safely, bounded waits,
and retrying while the database comes up.

The URL is checked here with the same reading the driver uses (asyncpg splits
the authority at the first ``/``, ``?`` or ``#``, then at the first ``@``). A
password holding one of those characters unencoded is read as a host, a port, a
path or a query by the driver, which then fails with the password in its message.
So such a URL is refused up front with a message that shows it masked, and the
masker finds the password the way a person means it: everything between ``://``
and the last ``@`` before the host is the user information.

At boot, connection failures that go away by themselves (refused, no answer, the
database starting up, out of connections) are retried with capped, jittered
exponential backoff until the start-up deadline, so a database that comes up
after the server just works; failures that do not (no such database, bad
credentials) stop the boot at once. Either way the caller gets one
:class:`~storage.errors.DatabaseStartupError` saying where and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import asyncpg

from storage.errors import (
    DatabaseRefused,
    DatabaseStartupError,
    DatabaseUnreachable,
    InvalidDatabaseUrl,
    MigrationError,
    StorageError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
MASK = "****"

#: First pause between connection attempts at boot; doubled after each failure
#: up to MAX_RETRY_DELAY, and each pause is drawn between half and all of it
#: (jitter, so replicas booting together do not retry in step).
FIRST_RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 5.0

#: Added to every complaint a character left unencoded may cause.
PERCENT_ENCODE = (
    "percent-encode special characters in the user name and password "
    "(/ as %2F, # as %23, ? as %3F, @ as %40, : in the user name as %3A)"
)

_PASSWORD_PARAMETER = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]+)", flags=re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Bounds on talking to PostgreSQL, in seconds."""

    #: One connection attempt: TCP, TLS, authentication.
    connect_timeout: float = 5.0
    #: Every statement (asyncpg's command_timeout), migrations included.
    statement_timeout: float = 30.0
    #: How long start-up keeps retrying connection failures that may pass;
    #: 0: one attempt.
    startup_timeout: float = 0.0


# -- the URL --------------------------------------------------------------------------
def _split_userinfo(dsn: str) -> tuple[str, str, str] | None:
    """(scheme and ``://``, user information, the rest from the ``@`` on), or None
    when the URL has no user information. Between ``://`` and the LAST ``@`` before
    the host, whatever characters the password holds."""
    head, sep, rest = dsn.partition("://")
    if not sep:
        return None
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    at = rest.rfind("@", 0, end)
    if at == -1:
        # No @ in the authority: an @ further on means a password with an
        # unencoded / ? or #; mask up to the last one (masking too much is safe).
        at = rest.rfind("@")
        if at == -1:
            return None
    return head + sep, rest[:at], rest[at:]


def mask_dsn(dsn: str) -> str:
    """The DSN with its password (URL userinfo, ``password=`` parameters, or
    key=value form) replaced by ****."""
    parts = _split_userinfo(dsn)
    if parts is not None:
        start, userinfo, rest = parts
        user, colon, _ = userinfo.partition(":")
        if colon:
            dsn = f"{start}{user}:{MASK}{rest}"
    return _PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", dsn)


def dsn_passwords(dsn: str) -> list[str]:
    """Every form of every password in ``dsn`` (as written and percent-decoded),
    longest first, for scrubbing them out of messages."""
    found: set[str] = set()
    parts = _split_userinfo(dsn)
    if parts is not None:
        _, colon, password = parts[1].partition(":")
        if colon:
            found.add(password)
    for match in _PASSWORD_PARAMETER.finditer(dsn):
        found.add(match.group(2).strip("'"))
    found |= {unquote(p) for p in found}
    return sorted((p for p in found if p), key=len, reverse=True)


def hide_password(text: str, dsn: str) -> str:
    """``text`` with any password of ``dsn`` in it replaced by ****."""
    for password in dsn_passwords(dsn):
        text = text.replace(password, MASK)
    return text


@dataclass(frozen=True, slots=True)
class ConnectionTarget:
    """Where a DSN leads, for messages (never the password)."""

    hosts: tuple[tuple[str, int], ...]
    database: str
    user: str

    @property
    def address(self) -> str:
        return ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts
        )

    def __str__(self) -> str:
        return f'PostgreSQL at {self.address} (database "{self.database}")'


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError
    return int(text)


def _hosts(hostspec: str, default_port: int) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for item in hostspec.split(","):
        if item.startswith("["):
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise ValueError
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        hosts.append((unquote(host), _port(port_text) if port_text else default_port))
    return hosts


def parse_dsn(dsn: str) -> ConnectionTarget:
    """Check ``dsn`` reads as intended and say where it leads; raises
    InvalidDatabaseUrl (password masked) otherwise."""

    def invalid(reason: str, *, encoding: bool = True) -> InvalidDatabaseUrl:
        return InvalidDatabaseUrl(
            mask_dsn(dsn), f"{reason}; {PERCENT_ENCODE}" if encoding else reason
        )

    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise invalid("it must start with postgresql:// (or postgres://)", encoding=False)
    if "#" in rest:
        raise invalid("it holds a '#'")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
    authority, after = rest[:end], rest[end:]
    path, _, query = after.removeprefix("/").partition("?")
    if "@" in path or "@" in query:
        raise invalid("it holds an '@' after the host")
    if authority.count("@") > 1:
        raise invalid("it holds more than one '@' before the host")
    userinfo, at, hostspec = authority.rpartition("@")
    try:
        params = parse_qs(query, strict_parsing=True) if query else {}
    except ValueError:
        raise invalid("the part after '?' is not name=value pairs joined by '&'") from None
    values = {name: found[-1] for name, found in params.items()}
    try:
        port = _port(values.get("port") or os.environ.get("PGPORT") or str(DEFAULT_PORT))
        hosts = _hosts(hostspec, port) if hostspec else []
    except ValueError:
        raise invalid("a port is not a number from 1 to 65535") from None
    if not hosts:
        named = values.get("host") or os.environ.get("PGHOST") or "localhost"
        hosts = [(host, port) for host in named.split(",")]
    user = unquote(userinfo.partition(":")[0]) if at else ""
    user = user or values.get("user") or os.environ.get("PGUSER") or getpass.getuser()
    database = unquote(path) or values.get("dbname") or values.get("database") or ""
    database = database or os.environ.get("PGDATABASE") or user
    return ConnectionTarget(tuple(hosts), database, user)


# -- failures -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str
    transient: bool
    #: The option whose bound ran out ("connect_timeout", "statement_timeout").
    limit: str | None = None


def _classify(
    exc: BaseException, target: ConnectionTarget, options: ConnectOptions, *, connecting: bool
) -> _Failure | None:
    """What a driver or network error at start-up means (None: not one of those).
    Branches on exception classes and SQLSTATEs, never on message text."""
    if isinstance(exc, TimeoutError):
        if connecting:
            return _Failure(
                f"no answer within {options.connect_timeout:g} s", True, "connect_timeout"
            )
        return _Failure(
            f"a statement took longer than {options.statement_timeout:g} s",
            True,
            "statement_timeout",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return _Failure(f'database "{target.database}" does not exist', False)
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        # The server's own sentence (it never quotes the password).
        message = str(exc) or type(exc).__name__
        # 08: connection exception, 53: insufficient resources (too many
        # connections), 57: operator intervention (starting up, shutting down).
        # Classes 28 (authorization) and 3D (catalog) and the rest do not pass.
        transient = sqlstate[:2] in ("08", "53", "57") or isinstance(
            exc, asyncpg.PostgresConnectionError
        )
        return _Failure(message, transient)
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        # Never the driver's text: it may quote the URL.
        return _Failure("the database URL is not one the driver accepts", False)
    if isinstance(exc, ConnectionRefusedError):
        return _Failure("connection refused", True)
    if isinstance(exc, socket.gaierror):
        return _Failure(f"host name not found ({exc.strerror})", True)
    if isinstance(exc, OSError):
        return _Failure(exc.strerror or str(exc) or type(exc).__name__, True)
    if isinstance(exc, asyncpg.InterfaceError):
        return _Failure(f"the connection failed ({exc})", True)
    return None


def _startup_error(
    failure: _Failure, target: ConnectionTarget, waited: float | None
) -> DatabaseStartupError:
    if failure.transient:
        return DatabaseUnreachable(
            failure.reason,
            address=target.address,
            database=target.database,
            limit=failure.limit,
            waited=waited,
        )
    return DatabaseRefused(failure.reason, address=target.address, database=target.database)


def backoff(failures: int) -> float:
    """The pause after ``failures`` failed attempts: doubling from
    FIRST_RETRY_DELAY up to MAX_RETRY_DELAY, drawn between half and all of it."""
    ceiling = min(FIRST_RETRY_DELAY * 2 ** min(failures - 1, 32), MAX_RETRY_DELAY)
    return random.uniform(ceiling / 2, ceiling)


async def retry_connect(
    attempt: Callable[[], Awaitable[T]], dsn: str, options: ConnectOptions
) -> T:
    """Run ``attempt`` (one try at connecting) until it succeeds, retrying failures
    that may pass until ``options.startup_timeout`` has gone by; raises
    DatabaseRefused or DatabaseUnreachable. The last attempt may start just before
    the deadline and so take up to the connect timeout past it."""
    target = parse_dsn(dsn)
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except Exception as exc:
            failure = _classify(exc, target, options, connecting=True)
            if failure is None:
                raise
            elapsed = time.monotonic() - started
            remaining = options.startup_timeout - elapsed
            if not failure.transient or remaining <= 0:
                waited = elapsed if failure.transient else None
                raise _startup_error(failure, target, waited) from exc
            pause = min(remaining, backoff(tries))
            log.warning(
                "%s is not reachable yet (%s); retrying in %.1f s",
                target,
                failure.reason,
                pause,
                extra={
                    "attempt": tries,
                    "elapsed_seconds": round(elapsed, 1),
                    "deadline_seconds": options.startup_timeout,
                },
            )
            await asyncio.sleep(pause)


async def connect(dsn: str, options: ConnectOptions, **kwargs: Any) -> asyncpg.Connection[Any]:
    """One connection, retried at boot as :func:`retry_connect` says."""

    async def attempt() -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            dsn,
            timeout=options.connect_timeout,
            command_timeout=options.statement_timeout,
            **kwargs,
        )
        return conn

    return await retry_connect(attempt, dsn, options)


async def create_pool(dsn: str, options: ConnectOptions, **kwargs: Any) -> asyncpg.Pool[Any]:
    """A pool whose first connection is open, retried at boot as
    :func:`retry_connect` says. Every later connection of the pool has the same
    connect timeout, and every statement the statement timeout."""

    async def attempt() -> asyncpg.Pool[Any]:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            dsn,
            timeout=options.connect_timeout,
            command_timeout=options.statement_timeout,
            **kwargs,
        )
        if kwargs.get("min_size") == 0:
            # The pool opened nothing: make sure the database answers now, not
            # at the first call.
            try:
                async with pool.acquire():
                    pass
            except BaseException:
                pool.terminate()
                raise
        return pool

    return await retry_connect(attempt, dsn, options)


@contextlib.asynccontextmanager
async def startup_errors(dsn: str, options: ConnectOptions) -> AsyncIterator[None]:
    """Within the block (start-up work on an open connection: migrations, checks),
    driver errors, and storage errors translated from them, become
    DatabaseStartupError naming the database and the limit that ran out.
    MigrationError passes as it is: it already says what went wrong."""
    try:
        yield
    except (DatabaseStartupError, MigrationError):
        raise
    except Exception as exc:
        # Storage errors translated from a driver error are judged by that error.
        cause = exc.__cause__ if isinstance(exc, StorageError) else exc
        if cause is None:
            raise
        failure = _classify(cause, parse_dsn(dsn), options, connecting=False)
        if failure is None:
            raise
        raise _startup_error(failure, parse_dsn(dsn), None) from exc


@contextlib.asynccontextmanager
async def connection(dsn: str, options: ConnectOptions) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection of its own for start-up work (``migrate``), connected as
    :func:`connect` does, with failures inside the block reported as
    :func:`startup_errors` does."""
    conn = await connect(dsn, options)
    try:
        async with startup_errors(dsn, options):
            yield conn
    finally:
        try:
            await conn.close(timeout=options.connect_timeout)
        except Exception:
            # The work is done (or has failed and says so): a close that fails
            # on a lost connection is not worth another error.
            conn.terminate()

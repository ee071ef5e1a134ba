"""Build the configured storage backend, and the storage entry points the command
line needs (migrations, the database URL checked and masked), so that callers
never import a backend or its driver. Backends are imported only when used."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypedDict, Unpack

from storage.interface import EventStore
from storage.rules import DEFAULT_PAGE_BYTES


class DatabaseTimeouts(TypedDict, total=False):
    """Bounds on talking to PostgreSQL, in seconds (defaults and meaning:
    storage.postgres.connect.ConnectOptions)."""

    #: One connection attempt.
    connect_timeout: float
    #: Every statement, migrations included.
    statement_timeout: float
    #: How long start-up retries connection failures that may pass (0: once).
    startup_timeout: float


def create_store(
    kind: Literal["memory", "postgres"],
    *,
    dsn: str = "",
    pool_min_size: int = 2,
    pool_max_size: int = 10,
    auto_migrate: bool = True,
    page_bytes: int = DEFAULT_PAGE_BYTES,
    **timeouts: Unpack[DatabaseTimeouts],
) -> EventStore:
    if kind == "memory":
        from storage.memory import InMemoryEventStore

        return InMemoryEventStore(page_bytes=page_bytes)
    from storage.postgres import PostgresEventStore
    from storage.postgres.connect import ConnectOptions

    return PostgresEventStore(
        dsn,
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        auto_migrate=auto_migrate,
        page_bytes=page_bytes,
        connect_options=ConnectOptions(**timeouts),
    )


async def migrate(dsn: str, **timeouts: Unpack[DatabaseTimeouts]) -> list[str]:
    """Apply pending PostgreSQL migrations; returns the file names applied (none:
    the schema was up to date). Raises only storage errors: DatabaseStartupError
    when the database cannot be used, MigrationError when the schema cannot be
    brought up to date."""
    from storage.postgres.connect import ConnectOptions
    from storage.postgres.migrations import migrate_database

    ran = await migrate_database(dsn, ConnectOptions(**timeouts))
    return [migration.file_name for migration in ran]


async def prepare_schema(
    dsn: str, *, auto_migrate: bool, **timeouts: Unpack[DatabaseTimeouts]
) -> None:
    """What a PostgreSQL store's start does to the schema, once, on a connection of
    its own: apply pending migrations (``auto_migrate``) or refuse a schema that
    has any. Raises only storage errors, as :func:`migrate` does."""
    from storage.postgres.connect import ConnectOptions
    from storage.postgres.migrations import prepare_database

    await prepare_database(dsn, ConnectOptions(**timeouts), auto_migrate=auto_migrate)


async def migration_status(
    dsn: str, **timeouts: Unpack[DatabaseTimeouts]
) -> list[tuple[str, datetime | None]]:
    """Every known migration's file name with when it was applied (None:
    pending). Raises only storage errors, as :func:`migrate` does."""
    from storage.postgres.connect import ConnectOptions
    from storage.postgres.migrations import database_migration_status

    statuses = await database_migration_status(dsn, ConnectOptions(**timeouts))
    return [(status.migration.file_name, status.applied_at) for status in statuses]


def check_database_url(dsn: str) -> None:
    """Raise InvalidDatabaseUrl (password masked) unless ``dsn`` is a PostgreSQL
    URL the driver reads as written."""
    from storage.postgres.connect import parse_dsn

    parse_dsn(dsn)


def mask_database_url(dsn: str) -> str:
    """``dsn`` with its password replaced by ****, however it is written."""
    from storage.postgres.connect import mask_dsn

    return mask_dsn(dsn)


def hide_database_password(text: str, dsn: str) -> str:
    """``text`` with any password of ``dsn`` replaced by ****."""
    from storage.postgres.connect import hide_password

    return hide_password(text, dsn)


def describe_database_url(dsn: str) -> str:
    """Where ``dsn`` leads, for messages: ``PostgreSQL at host:port (database "x")``."""
    from storage.postgres.connect import parse_dsn

    return str(parse_dsn(dsn))

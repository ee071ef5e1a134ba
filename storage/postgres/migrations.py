"""Versioned, checksummed SQL migrations, applied in order under an advisory lock.

Files are ``migrations/NNN_description.sql`` in the ``migrations`` package (shipped in
the wheel). Each runs in its own transaction together with its row in
``event_streaming.schema_version``; a session-level advisory lock makes replicas that
boot at once take turns, and the ones that come later find nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from storage.errors import MigrationError
from storage.postgres.base import session_advisory_lock
from storage.postgres.connect import ConnectOptions, connection
from storage.postgres.database import Connection
from storage.postgres.errors import DRIVER_ERRORS, to_storage_error

log = logging.getLogger(__name__)

FILE_NAME_RE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
#: Key of the advisory lock held while migrating ("evstream" in ASCII).
ADVISORY_LOCK_KEY = 0x657673747265616D

BOOTSTRAP_SQL = """
CREATE SCHEMA IF NOT EXISTS event_streaming;
CREATE TABLE IF NOT EXISTS event_streaming.schema_version (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""
SELECT_APPLIED_SQL = (
    "SELECT version, name, checksum, applied_at FROM event_streaming.schema_version "
    "ORDER BY version"
)
SCHEMA_VERSION_EXISTS_SQL = "SELECT to_regclass('event_streaming.schema_version') IS NOT NULL"
INSERT_APPLIED_SQL = (
    "INSERT INTO event_streaming.schema_version (version, name, checksum) VALUES ($1, $2, $3)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    migration: Migration
    applied_at: datetime | None


def load_migrations() -> list[Migration]:
    """Every migration file shipped with the package, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("migrations").iterdir():
        match = FILE_NAME_RE.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"two migration files have version {version:03d}: "
                f"{found[version].file_name} and {entry.name}"
            )
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _applied(conn: Connection) -> dict[int, AppliedMigration]:
    if not await conn.fetchval(SCHEMA_VERSION_EXISTS_SQL):
        return {}
    rows = await conn.fetch(SELECT_APPLIED_SQL)
    return {r["version"]: AppliedMigration(**dict(r)) for r in rows}


def _check_checksums(migrations: list[Migration], applied: dict[int, AppliedMigration]) -> None:
    for migration in migrations:
        done = applied.get(migration.version)
        if done is not None and done.checksum != migration.checksum:
            raise MigrationError(
                f"migration {migration.file_name} was changed after it was applied "
                f"(checksum {migration.checksum[:12]} in the file, {done.checksum[:12]} "
                "in event_streaming.schema_version); restore the file and put the "
                "change in a new migration"
            )
    known = {m.version for m in migrations}
    for version, done in applied.items():
        if version not in known:
            log.warning(
                "database has migration %03d_%s that this version does not know",
                version,
                done.name,
                extra={"version": version},
            )


async def apply_migrations(conn: Connection) -> list[Migration]:
    """Apply every pending migration; returns those applied (empty when up to date)."""
    try:
        return await _apply_migrations(conn)
    except DRIVER_ERRORS as exc:
        raise to_storage_error(exc) from exc


async def _apply_migrations(conn: Connection) -> list[Migration]:
    migrations = load_migrations()
    async with session_advisory_lock(conn, ADVISORY_LOCK_KEY, wait=True):
        await conn.execute(BOOTSTRAP_SQL)
        applied = await _applied(conn)
        _check_checksums(migrations, applied)
        ran: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            started = time.perf_counter()
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        INSERT_APPLIED_SQL, migration.version, migration.name, migration.checksum
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.file_name} failed: {exc}; nothing of it was applied"
                ) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info(
                "applied migration %s in %.1f ms",
                migration.file_name,
                elapsed_ms,
                extra={"migration": migration.file_name, "duration_ms": round(elapsed_ms, 1)},
            )
            ran.append(migration)
        if not ran:
            log.info("database schema is up to date", extra={"migrations": len(migrations)})
        return ran


async def migration_status(conn: Connection) -> list[MigrationStatus]:
    """Every known migration with when it was applied (None: pending)."""
    migrations = load_migrations()
    try:
        applied = await _applied(conn)
    except DRIVER_ERRORS as exc:
        raise to_storage_error(exc) from exc
    _check_checksums(migrations, applied)
    return [
        MigrationStatus(m, applied[m.version].applied_at if m.version in applied else None)
        for m in migrations
    ]


async def pending_migrations(conn: Connection) -> list[Migration]:
    return [s.migration for s in await migration_status(conn) if s.applied_at is None]


async def ensure_schema(conn: Connection, *, auto_migrate: bool) -> None:
    """Bring the schema up to date (``auto_migrate``), or else refuse a schema with
    pending migrations, saying how to apply them (MigrationError)."""
    if auto_migrate:
        await apply_migrations(conn)
        return
    pending = await pending_migrations(conn)
    if pending:
        names = ", ".join(m.file_name for m in pending)
        raise MigrationError(
            f"{len(pending)} migration(s) pending ({names}) and "
            "EVENTSTREAMING_AUTO_MIGRATE is false; apply them with "
            "'python -m server migrate' (or 'eventstreaming migrate')"
        )


async def migrate_database(dsn: str, options: ConnectOptions) -> list[Migration]:
    """``migrate``: apply pending migrations on a connection of its own, connecting
    (and retrying) as the server does at boot; raises only storage errors."""
    async with connection(dsn, options) as conn:
        return await apply_migrations(conn)


async def prepare_database(dsn: str, options: ConnectOptions, *, auto_migrate: bool) -> None:
    """What a server's start does to the schema (:func:`ensure_schema`), on a
    connection of its own: done once before several server processes start, so
    they need not each take the migration lock; raises only storage errors."""
    async with connection(dsn, options) as conn:
        await ensure_schema(conn, auto_migrate=auto_migrate)


async def database_migration_status(dsn: str, options: ConnectOptions) -> list[MigrationStatus]:
    """``migrate --status`` on a connection of its own; raises only storage errors."""
    async with connection(dsn, options) as conn:
        return await migration_status(conn)

"""Migrations on PostgreSQL: applied at boot, idempotent, safe in parallel, checksummed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from storage.errors import MigrationError
from storage.postgres import migrations
from storage.postgres.migrations import Migration, apply_migrations, load_migrations
from tests.support import ROOT, ServerProcess, create_database, drop_database, dsn_for


@pytest_asyncio.fixture
async def empty_dsn() -> AsyncIterator[str]:
    """A new empty database for one test."""
    name = await create_database()
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


async def applied_versions(dsn: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM event_streaming.schema_version ORDER BY version"
        )
    finally:
        await conn.close()
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


def cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env={**os.environ, "EVENTSTREAMING_DATABASE_URL": dsn, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migration_files_are_numbered_and_shipped() -> None:
    found = load_migrations()
    assert found, "no migrations in the migrations package"
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.file_name == f"{m.version:03d}_{m.name}.sql" for m in found)


async def test_migrations_apply_to_an_empty_database(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        ran = await apply_migrations(conn)
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'event_streaming'"
            )
        }
    finally:
        await conn.close()
    expected = load_migrations()
    assert [m.version for m in ran] == [m.version for m in expected]
    assert await applied_versions(empty_dsn) == [(m.version, m.name, m.checksum) for m in expected]
    assert {"schema_version", "streams", "events"} <= tables


async def test_second_run_applies_nothing(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await apply_migrations(conn)
        before = await applied_versions(empty_dsn)
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()
    assert await applied_versions(empty_dsn) == before


async def test_failed_migration_leaves_nothing_behind(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = load_migrations()
    broken = Migration(
        len(good) + 1, "broken", "CREATE TABLE event_streaming.half (x int);\nSELEC 1;"
    )
    monkeypatch.setattr(migrations, "load_migrations", lambda: [*good, broken])
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(MigrationError, match=r"broken\.sql failed"):
            await apply_migrations(conn)
        half = await conn.fetchval("SELECT to_regclass('event_streaming.half')")
    finally:
        await conn.close()
    assert half is None
    assert [v for v, _, _ in await applied_versions(empty_dsn)] == [m.version for m in good]


def test_cli_migrate_and_status(empty_dsn: str) -> None:
    before = cli(empty_dsn, "migrate", "--status")
    assert before.returncode == 0, before.stderr
    assert "pending" in before.stdout
    assert f"0 applied, {len(load_migrations())} pending" in before.stdout
    applied = cli(empty_dsn, "migrate")
    assert applied.returncode == 0, applied.stderr
    assert "applied 001_streams_and_events.sql" in applied.stdout
    after = cli(empty_dsn, "migrate", "--status")
    assert f"{len(load_migrations())} applied, 0 pending" in after.stdout


async def test_three_servers_booting_at_once_migrate_once(empty_dsn: str, tmp_path: Path) -> None:
    env = {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": empty_dsn}
    servers = await asyncio.gather(
        *(ServerProcess.start(env, tmp_path / f"server{i}.log") for i in range(3))
    )
    try:
        versions = [v for v, _, _ in await applied_versions(empty_dsn)]
        assert versions == [m.version for m in load_migrations()]
        logs = "".join(s.log() for s in servers)
        assert logs.count("applied migration 001_streams_and_events.sql") == 1
    finally:
        for server in servers:
            await server.terminate()


async def test_changed_checksum_stops_the_boot(empty_dsn: str, tmp_path: Path) -> None:
    assert cli(empty_dsn, "migrate").returncode == 0
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(
            "UPDATE event_streaming.schema_version SET checksum = 'tampered' WHERE version = 1"
        )
    finally:
        await conn.close()
    result = cli(empty_dsn, "serve", EVENTSTREAMING_STORAGE="postgres", EVENTSTREAMING_PORT="0")
    assert result.returncode != 0
    assert "001_streams_and_events.sql was changed after it was applied" in result.stderr
    assert "Traceback" not in result.stderr


def test_pending_migrations_without_auto_migrate_refuse_to_start(empty_dsn: str) -> None:
    result = cli(
        empty_dsn,
        "serve",
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_AUTO_MIGRATE="false",
        EVENTSTREAMING_PORT="0",
    )
    assert result.returncode != 0
    assert "pending" in result.stderr
    assert "python -m server migrate" in result.stderr
    assert "Traceback" not in result.stderr

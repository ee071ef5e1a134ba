"""Command line: ``eventstreaming`` (or ``python -m server``) serve | migrate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from server.logs import configure_logging
from server.settings import Settings, SettingsError, load_settings
from storage.errors import StorageError
from storage.postgres.migrations import apply_migrations, migration_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventstreaming",
        description="EventStreaming gRPC service. Settings come from EVENTSTREAMING_* "
        "environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the gRPC server (the default command)")
    migrate = commands.add_parser(
        "migrate", help="apply pending PostgreSQL migrations (EVENTSTREAMING_DATABASE_URL)"
    )
    migrate.add_argument(
        "--status", action="store_true", help="list migrations and whether each is applied"
    )
    return parser


async def _migrate(settings: Settings, status_only: bool) -> int:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        if status_only:
            statuses = await migration_status(conn)
            for status in statuses:
                when = status.applied_at.isoformat() if status.applied_at else "pending"
                print(f"{status.migration.file_name:40} {when}")
            pending = sum(1 for s in statuses if s.applied_at is None)
            print(f"{len(statuses) - pending} applied, {pending} pending")
        else:
            ran = await apply_migrations(conn)
            for migration in ran:
                print(f"applied {migration.file_name}")
            print(f"{len(ran)} migration(s) applied; the schema is up to date")
    finally:
        await conn.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"eventstreaming: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args.status))
        from server.app import serve

        asyncio.run(serve(settings))
    except StorageError as exc:
        print(f"eventstreaming: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"eventstreaming: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

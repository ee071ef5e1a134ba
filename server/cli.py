"""Command line: ``eventstreaming`` (or ``python -m server``) serve | migrate |
retention | config | health; ``serve`` when no command is given."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.logs import configure_logging
from server.settings import ENV_PREFIX, Settings, SettingsError, load_settings
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
    retention = commands.add_parser("retention", help="retention policies")
    retention_commands = retention.add_subparsers(dest="retention_command", metavar="ACTION")
    retention_commands.required = True
    retention_commands.add_parser(
        "run-once", help="run one retention pass now and print what it deleted"
    )
    commands.add_parser(
        "config",
        help="print the effective settings (environment, .env, defaults), secrets masked",
        description="Print every setting as EVENTSTREAMING_NAME=value, as the server "
        "would use it; the database password and the auth tokens are masked.",
    )
    health = commands.add_parser(
        "health",
        help="ask a running server's gRPC health service; exit 0 when SERVING",
        description="Check the grpc.health.v1.Health service of a server (by default "
        "the local one on EVENTSTREAMING_PORT, over TLS when EVENTSTREAMING_TLS_CERT_FILE "
        "is set, trusting that certificate). Exit code 0: SERVING; 1: anything else.",
    )
    health.add_argument("--address", help="host:port (default 127.0.0.1:EVENTSTREAMING_PORT)")
    health.add_argument("--service", default="", help="service name to ask about (default: all)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument("--ca-file", type=Path, help="PEM roots to trust instead")
    health.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    health.add_argument("--key-file", type=Path, help="client key (mutual TLS)")
    health.add_argument(
        "--server-name", help="name the server certificate carries (default localhost)"
    )
    return parser


_SECRET_MASK = "****"


def mask_dsn(dsn: str) -> str:
    """The DSN with its password (URL or key=value form) replaced by ****."""
    parts = urlsplit(dsn)
    if parts.scheme and parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        name = user.partition(":")[0]
        dsn = urlunsplit(parts._replace(netloc=f"{name}:{_SECRET_MASK}@{host}"))
    return re.sub(r"(password\s*=\s*)[^&\s]+", rf"\g<1>{_SECRET_MASK}", dsn, flags=re.I)


def describe_settings(settings: Settings) -> list[tuple[str, str]]:
    """Every setting as (variable, shown value), secrets masked."""
    shown: list[tuple[str, str]] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name == "database_url":
            text = mask_dsn(value.get_secret_value())
        elif name == "auth_tokens":
            count = len(settings.auth_token_list)
            text = f"{_SECRET_MASK} ({count} token{'s' if count != 1 else ''})" if count else ""
        elif value is None:
            text = ""
        else:
            text = str(value)
        shown.append((f"{ENV_PREFIX}{name.upper()}", text))
    return shown


async def _health(settings: Settings, args: argparse.Namespace) -> int:
    from server.health_probe import ProbeTarget, check_health

    target = ProbeTarget.from_settings(
        settings,
        address=args.address,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        server_name=args.server_name,
    )
    status = await check_health(target, args.service, args.timeout)
    print(f"{target.address}: {status}")
    return 0 if status == "SERVING" else 1


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
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "config":
            for variable, value in describe_settings(settings):
                print(f"{variable}={value}")
            return 0
        if args.command == "health":
            return asyncio.run(_health(settings, args))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args.status))
        if args.command == "retention":
            from server.retention import run_once

            return asyncio.run(run_once(settings))
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

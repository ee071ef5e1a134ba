"""Command line: ``eventstreaming`` (or ``python -m server``) serve | migrate |
retention | config | health; ``serve`` when no command is given."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from server.logs import configure_logging
from server.settings import (
    ENV_PREFIX,
    Settings,
    SettingsError,
    StartupError,
    load_settings,
    unknown_variables,
)
from storage.errors import DatabaseStartupError, InvalidDatabaseUrl, MigrationError, StorageError
from storage.factory import (
    describe_database_url,
    hide_database_password,
    mask_database_url,
    migrate,
    migration_status,
)

log = logging.getLogger(__name__)

#: The settings that set the limits a database start-up error may name.
LIMIT_SETTINGS = {
    "connect_timeout": f"{ENV_PREFIX}DB_CONNECT_TIMEOUT_SECONDS",
    "statement_timeout": f"{ENV_PREFIX}DB_STATEMENT_TIMEOUT_SECONDS",
    "startup_timeout": f"{ENV_PREFIX}STARTUP_TIMEOUT_SECONDS",
}


def _version() -> str:
    try:
        return version("eventstreaming")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventstreaming",
        description="EventStreaming gRPC service. Settings come from EVENTSTREAMING_* "
        "environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server (the default command); with EVENTSTREAMING_WORKERS=N > 1, "
        "N server processes sharing the port",
    )
    # Set by the supervisor of worker processes for each worker it starts.
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-link", type=int, help=argparse.SUPPRESS)
    migrate_command = commands.add_parser(
        "migrate", help="apply pending PostgreSQL migrations (EVENTSTREAMING_DATABASE_URL)"
    )
    migrate_command.add_argument(
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
    """The DSN with its password (URL or key=value form) replaced by ****, even
    when the password holds characters that should have been percent-encoded."""
    return mask_database_url(dsn)


def show_value(value: object) -> str:
    """A setting's value as the README's configuration table writes it and as the
    variable would be set: ``true``/``false``, ``10`` for 10.0, paths as given,
    empty when unset."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


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
        else:
            text = show_value(value)
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
    dsn = settings.database_url.get_secret_value()
    timeouts = settings.database_timeouts()
    if status_only:
        statuses = await migration_status(dsn, **timeouts)
        for file_name, applied_at in statuses:
            print(f"{file_name:40} {applied_at.isoformat() if applied_at else 'pending'}")
        pending = sum(1 for _, applied_at in statuses if applied_at is None)
        print(f"{len(statuses) - pending} applied, {pending} pending")
    else:
        ran = await migrate(dsn, **timeouts)
        for file_name in ran:
            print(f"applied {file_name}")
        print(f"{len(ran)} migration(s) applied; the schema is up to date")
    return 0


def _warn_about_unknown_variables() -> None:
    for name, close in unknown_variables():
        hint = f"; did you mean {close}?" if close else ""
        log.warning("%s is not a setting and is ignored%s", name, hint, extra={"variable": name})


def _startup_failure(exc: Exception, dsn: str) -> str | None:
    """The one line for an error that stops the start (None: not one of those)."""
    database_url = f"{ENV_PREFIX}DATABASE_URL"
    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, DatabaseStartupError):
        return f"{database_url}: {exc.describe(LIMIT_SETTINGS)}"
    if isinstance(exc, InvalidDatabaseUrl):
        return f"{database_url}: {exc}"
    if isinstance(exc, MigrationError):
        return f"{database_url}: {describe_database_url(dsn)}: {exc}"
    return None


def _run(args: argparse.Namespace, settings: Settings) -> int:
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
    from server.loop import run

    worker = getattr(args, "worker", None)
    if worker is not None:
        from server.workers import WorkerLink

        run(serve(settings, WorkerLink(worker, args.worker_link)), settings.event_loop)
        return 0
    if settings.workers > 1:
        from server.workers import supervise

        # The supervisor only waits on its workers: asyncio's own loop does.
        return asyncio.run(supervise(settings))
    run(serve(settings), settings.event_loop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a setting is bad or cannot be used (port taken, host
    unknown, database missing or unreachable, schema not up to date): one line
    naming the variable; 1 anything else, in one line; 130 interrupted."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"eventstreaming: {exc}", file=sys.stderr)
        return 2
    worker = getattr(args, "worker", None)
    if worker is None:
        configure_logging(settings.log_level, settings.log_format)
        _warn_about_unknown_variables()
    else:  # the supervisor warned already
        configure_logging(settings.log_level, settings.log_format, fields={"worker": worker})
    dsn = settings.database_url.get_secret_value()

    def report(message: str) -> None:
        # The password never reaches the terminal, whatever a message quotes.
        print(f"eventstreaming: {hide_database_password(message, dsn)}", file=sys.stderr)

    try:
        return _run(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        line = _startup_failure(exc, dsn)
        if line is not None:
            report(line)
            return 2
        if isinstance(exc, StorageError):
            report(str(exc))
            return 1
        report(
            f"unexpected {type(exc).__name__}: {exc} "
            f"({ENV_PREFIX}LOG_LEVEL=DEBUG logs where it happened)"
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(hide_database_password(traceback.format_exc(), dsn))
        return 1

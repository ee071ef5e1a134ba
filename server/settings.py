"""Process settings, read from EVENTSTREAMING_* environment variables (and .env)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.loop import uvloop_available
from storage.errors import InvalidDatabaseUrl
from storage.factory import DatabaseTimeouts, check_database_url, mask_database_url

ENV_PREFIX = "EVENTSTREAMING_"

#: EVENTSTREAMING_* variables that are not settings of the server but belong to the
#: project's other tools (the test suite, the benchmark, the Node.js client), so a
#: shell that sets them for those is not warned about.
OTHER_TOOLS_VARIABLES = frozenset(
    {
        "EVENTSTREAMING_TEST_DATABASE_URL",
        "EVENTSTREAMING_BENCH_DATABASE_URL",
        # The Python client's eventsourcing module (client/) and the Node.js client.
        "EVENTSTREAMING_ADDRESS",
        "EVENTSTREAMING_TOKEN",
        "EVENTSTREAMING_TLS",
        "EVENTSTREAMING_CACERT",
        "EVENTSTREAMING_CLIENT_CERT",
        "EVENTSTREAMING_CLIENT_KEY",
        "EVENTSTREAMING_SERVER_NAME",
        "EVENTSTREAMING_TIMEOUT",
        "EVENTSTREAMING_STREAM_PREFIX",
        "EVENTSTREAMING_TRACKING",
    }
)


class Settings(BaseSettings):
    """Every setting of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    storage: Literal["memory", "postgres"] = "memory"
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    auto_migrate: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=50051, ge=0, le=65535)
    pool_min_size: int = Field(default=2, ge=0, le=1000)
    pool_max_size: int = Field(default=10, ge=1, le=1000)
    #: Server processes sharing the port (SO_REUSEPORT), PostgreSQL only; each has
    #: a pool of its own (POOL_MIN_SIZE..POOL_MAX_SIZE apiece).
    workers: int = Field(default=1, ge=1, le=64)
    #: One attempt at opening a database connection (TCP, TLS, authentication).
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    #: Every database statement, migrations included (asyncpg's command_timeout).
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0, le=86400)
    #: How long start-up keeps retrying a database that refuses or does not answer
    #: yet (0: one attempt).
    startup_timeout_seconds: float = Field(default=60.0, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    #: Seconds between retention passes.
    retention_interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no metrics endpoint
    metrics_refresh_seconds: float = Field(default=15.0, gt=0, le=3600)
    metrics_queue_streams: int = Field(default=20, ge=0, le=1000)
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_client_ca_file: FilePath | None = None
    #: Comma-separated bearer tokens; empty: no authentication.
    auth_tokens: SecretStr = SecretStr("")
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=2**31 - 1)
    #: The byte budget of the events of one response (reads, dequeues, dead-letter
    #: pages, each page of a subscription's history): a page stops early once its
    #: events' data and metadata add up to this, always holding at least one event.
    page_bytes: int = Field(default=3 * 1024 * 1024, ge=1024, le=2**30)
    #: Requests an AppendSession may hold read but unanswered; at that many the
    #: server reads no more of its requests until some are answered.
    append_session_max_in_flight: int = Field(default=1000, ge=1, le=100_000)
    #: The event loop of `serve`: uvloop when installed (auto), or the one named.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @property
    def auth_token_list(self) -> list[str]:
        """The accepted bearer tokens (none: authentication is off)."""
        raw = self.auth_tokens.get_secret_value()
        return [token.strip() for token in raw.split(",") if token.strip()]

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    def database_timeouts(self) -> DatabaseTimeouts:
        """The database bounds as storage takes them."""
        return DatabaseTimeouts(
            connect_timeout=self.db_connect_timeout_seconds,
            statement_timeout=self.db_statement_timeout_seconds,
            startup_timeout=self.startup_timeout_seconds,
        )

    @field_validator("log_level", "log_format", "storage", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: ValidationInfo) -> Any:
        """Choices in any case: ``debug`` is ``DEBUG``, ``Postgres`` is ``postgres``."""
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("database_url")
    @classmethod
    def _readable_database_url(cls, value: SecretStr) -> SecretStr:
        """Refuse, at load, a URL the driver would mis-read (and then quote the
        password in its error)."""
        try:
            check_database_url(value.get_secret_value())
        except InvalidDatabaseUrl as exc:
            raise ValueError(exc.reason) from None
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "TLS_CERT_FILE and TLS_KEY_FILE go together: set both for TLS, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self

    @field_validator("event_loop")
    @classmethod
    def _installed_loop(cls, value: str) -> str:
        if value == "uvloop" and not uvloop_available():
            raise ValueError("uvloop is not installed (pip install uvloop), or choose auto")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"POOL_MIN_SIZE ({self.pool_min_size}) must not exceed "
                f"POOL_MAX_SIZE ({self.pool_max_size})"
            )
        return self


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


class StartupError(Exception):
    """A setting is well-formed but cannot be used (its port is taken, its host is
    not this machine's); the message is one line naming the variable."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{ENV_PREFIX}{setting.upper()}: {problem}")
        self.setting = setting
        self.problem = problem


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            value = error.get("input")
            if field == "database_url" and isinstance(value, str):
                shown = f"={mask_database_url(value)!r}"
            elif field in ("database_url", "auth_tokens") or isinstance(value, dict):
                shown = ""
            else:
                shown = f"={value!r}"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name}{shown}: {message}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[tuple[str, str | None]]:
    """EVENTSTREAMING_* variables (in the environment or the .env file) that are no
    setting, each with the closest setting's name (None: nothing close). Settings
    ignore them, so a misspelt name would otherwise go unnoticed."""
    known = [name.upper() for name in Settings.model_fields]
    names = set(os.environ if environ is None else environ)
    if env_file is not None and env_file.is_file():
        names |= set(dotenv_values(env_file))
    found: list[tuple[str, str | None]] = []
    for name in sorted({n.upper() for n in names}):
        if not name.startswith(ENV_PREFIX) or name in OTHER_TOOLS_VARIABLES:
            continue
        # Compared without the prefix, which every name shares.
        suffix = name.removeprefix(ENV_PREFIX)
        if suffix in known:
            continue
        close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
        found.append((name, f"{ENV_PREFIX}{close[0]}" if close else None))
    return found

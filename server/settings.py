"""Process settings, read from EVENTSTREAMING_* environment variables (and .env)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "EVENTSTREAMING_"


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

    @property
    def auth_token_list(self) -> list[str]:
        """The accepted bearer tokens (none: authentication is off)."""
        raw = self.auth_tokens.get_secret_value()
        return [token.strip() for token in raw.split(",") if token.strip()]

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "TLS_CERT_FILE and TLS_KEY_FILE go together: set both for TLS, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self

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


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            value = error.get("input")
            secret = field in ("database_url", "auth_tokens")
            shown = "" if secret or isinstance(value, dict) else f"={value!r}"
            problems.append(f"{name}{shown}: {error['msg']}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None

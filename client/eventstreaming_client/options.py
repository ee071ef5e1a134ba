"""Connection settings shared by both clients: address, TLS, bearer token, the
default deadline and the retry policy."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

DEFAULT_ADDRESS = "localhost:50051"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n-th wait is a random time between
    0 and ``min(max_backoff, initial_backoff * multiplier**n)`` seconds.

    Only UNAVAILABLE is retried, and only on calls that are safe to repeat (reads,
    and writes the server recognises when repeated: appends, whose event ids the
    client assigns before the first attempt). ``max_attempts`` counts the first
    try; 1 turns retries off. Subscriptions reconnect with the same backoff, without
    a limit on attempts.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return random.uniform(0, ceiling)

    def delays(self) -> Iterator[float]:
        """The waits between attempts (``max_attempts - 1`` of them)."""
        for attempt in range(self.max_attempts - 1):
            yield self.backoff(attempt)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ConnectionOptions:
    """Where the service is and how to reach it.

    ``tls``: speak TLS, trusting ``root_certificates`` (PEM bytes or a path; None:
    the system's roots); ``certificate_chain`` and ``private_key`` for mutual TLS;
    ``server_name`` overrides the name expected in the server's certificate.
    ``token``: sent as ``authorization: Bearer <token>`` on every call.
    ``timeout``: the default deadline of a call (seconds), retries included; long
    polls get their wait on top. ``channel_options``: passed to gRPC as they are.
    """

    address: str = DEFAULT_ADDRESS
    tls: bool = False
    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None
    token: str | None = None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    channel_options: Sequence[tuple[str, Any]] = ()

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        uses_tls_files = self.root_certificates or self.certificate_chain or self.private_key
        if uses_tls_files and not self.tls:
            object.__setattr__(self, "tls", True)
        if bool(self.certificate_chain) != bool(self.private_key):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call sends along."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def grpc_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        options.extend(self.channel_options)
        return options

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)

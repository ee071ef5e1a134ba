"""Transport security and caller authentication: TLS (optionally mutual) from
certificate files, and bearer tokens checked in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

import grpc

from server.settings import Settings

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "bearer "

#: Services any caller may use without a token: load balancers and orchestrators
#: probe health without credentials. Reflection is NOT open: it describes the
#: whole API, and grpcurl sends ``-H 'authorization: Bearer ...'`` to it as well.
OPEN_SERVICES = ("grpc.health.v1.Health",)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files; None when TLS is off.

    With a client CA the server requires and verifies a client certificate
    signed by it (mutual TLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    certificate = settings.tls_cert_file.read_bytes()
    key = settings.tls_key_file.read_bytes()
    client_ca = (
        settings.tls_client_ca_file.read_bytes()
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class BearerTokens:
    """The tokens a caller may present as ``authorization: Bearer <token>``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._tokens = [token.encode() for token in tokens]

    @staticmethod
    def is_open(method: str) -> bool:
        """Whether ``method`` (``/package.Service/Method``) needs no token."""
        service = method.lstrip("/").partition("/")[0]
        return service in OPEN_SERVICES

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """None when the metadata carries a valid token, else why not (the
        message the caller gets with UNAUTHENTICATED)."""
        header = None
        for key, value in metadata or ():
            if key.lower() == AUTHORIZATION_KEY:
                header = value.decode(errors="replace") if isinstance(value, bytes) else value
                break
        if header is None:
            return "missing bearer token: send metadata 'authorization: Bearer <token>'"
        if header[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
            return "the authorization metadata must be 'Bearer <token>'"
        presented = header[len(BEARER_PREFIX) :].strip().encode()
        # Compare against every token so the time taken does not tell which one
        # (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return None if matched else "invalid bearer token"

"""Whether the server can listen where its settings say: checked with a socket of
its own before gRPC, the metrics server or a worker supervisor try."""

from __future__ import annotations

import errno
import socket

from server.settings import StartupError


def address_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_can_listen(host: str, port: int, setting: str) -> None:
    """Raise StartupError (naming HOST or ``setting``) unless a listening socket
    can be bound to ``host``:``port`` without sharing it. Checked with a socket of
    our own before gRPC or the metrics server try, so that a taken port or an
    unknown host is one clear line rather than their logged errors, and before
    start-up waits for the database."""
    bare = host.strip("[]")
    try:
        found = socket.getaddrinfo(
            bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError("host", f"cannot resolve {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, sockaddr in found:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 on this machine; gRPC skips it too
        with sock:
            # As gRPC binds: reuse of a port in TIME_WAIT, never of one listened on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                where = address_of(host, port)
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(setting, f"{where} is already in use") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise StartupError(
                        "host", f"{host} is not an address of this machine"
                    ) from None
                raise StartupError(setting, f"cannot listen on {where}: {exc.strerror}") from None

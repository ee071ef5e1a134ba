"""Errors the server itself raises (storage raises storage.errors); each maps to a
status code in server.status."""

from __future__ import annotations


class InvalidArgument(Exception):
    """A request field is invalid; ``field`` is its path in the request."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ServerShuttingDown(Exception):
    """The server is stopping; the client should call again (elsewhere)."""

    def __init__(self, hint: str = "subscribe again to continue") -> None:
        super().__init__(f"the server is shutting down; {hint}")

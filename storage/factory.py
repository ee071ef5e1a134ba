"""Build the configured storage backend."""

from __future__ import annotations

from typing import Literal

from storage.interface import EventStore


def create_store(
    kind: Literal["memory", "postgres"],
    *,
    dsn: str = "",
    pool_min_size: int = 2,
    pool_max_size: int = 10,
    auto_migrate: bool = True,
) -> EventStore:
    if kind == "memory":
        from storage.memory import InMemoryEventStore

        return InMemoryEventStore()
    from storage.postgres import PostgresEventStore

    return PostgresEventStore(
        dsn,
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        auto_migrate=auto_migrate,
    )

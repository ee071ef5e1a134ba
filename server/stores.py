"""The store the settings describe."""

from __future__ import annotations

from server.settings import Settings
from storage.factory import create_store
from storage.interface import EventStore


def build_store(
    settings: Settings, *, pool_min_size: int | None = None, pool_max_size: int | None = None
) -> EventStore:
    """The store the settings describe (not started); the pool sizes may be
    narrowed for a one-off command."""
    return create_store(
        settings.storage,
        dsn=settings.database_url.get_secret_value(),
        pool_min_size=settings.pool_min_size if pool_min_size is None else pool_min_size,
        pool_max_size=settings.pool_max_size if pool_max_size is None else pool_max_size,
        auto_migrate=settings.auto_migrate,
        page_bytes=settings.page_bytes,
        **settings.database_timeouts(),
    )

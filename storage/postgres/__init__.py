"""The PostgreSQL backend (asyncpg)."""

from storage.postgres.store import PostgresEventStore

__all__ = ["PostgresEventStore"]

"""PostgresEventStore: every capability on one asyncpg pool."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from storage.errors import StreamNotFound
from storage.interface import EventStore
from storage.postgres.admin import PostgresAdmin
from storage.postgres.config import PostgresConfig
from storage.postgres.connect import ConnectOptions, startup_errors
from storage.postgres.consumers import PostgresConsumers
from storage.postgres.log import METADATA_SQL, PostgresLog
from storage.postgres.migrations import ensure_schema
from storage.postgres.queue import PostgresQueue
from storage.postgres.queue_admin import PostgresQueueAdmin
from storage.records import RetentionReport, StreamMetadata, StreamType
from storage.rules import DEFAULT_PAGE_BYTES


class PostgresEventStore(
    PostgresLog,
    PostgresQueue,
    PostgresQueueAdmin,
    PostgresConfig,
    PostgresConsumers,
    PostgresAdmin,
    EventStore,
):
    """The production backend. Migrations run at start() unless auto_migrate is off,
    in which case start() refuses to run against a schema with pending migrations."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        auto_migrate: bool = True,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        watch_interval: float = 1.0,
        connect_options: ConnectOptions | None = None,
    ) -> None:
        super().__init__(
            dsn,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            page_bytes=page_bytes,
            watch_interval=watch_interval,
            connect_options=connect_options,
        )
        self._auto_migrate = auto_migrate

    async def start(self) -> None:
        """Connect (retrying while the database comes up, within the start-up
        timeout) and migrate; failures are DatabaseStartupError or MigrationError."""
        await self._open_pool()
        try:
            async with startup_errors(self._dsn, self._connect_options):
                async with self.db.session() as session:
                    await ensure_schema(session.connection, auto_migrate=self._auto_migrate)
                await self._start_notifier()
        except BaseException:
            await self._stop_notifier()
            await self._close_pool()
            raise

    async def close(self) -> None:
        if self._appends is not None:
            await self._appends.close()
        await self._stop_notifier()
        await self._close_pool()

    async def get_stream_metadata(self, stream_name: str) -> StreamMetadata:
        row = await self.db.fetchrow(METADATA_SQL, stream_name)
        if row is None:
            raise StreamNotFound(stream_name)
        if row["stream_type"] == StreamType.EPHEMERAL:
            return await self._queue_metadata(row)
        return self._log_metadata(row)

    async def enforce_retention(self, now: datetime | None = None) -> RetentionReport:
        """The logs' retention, then the queues' upkeep: remembered ids past their
        window are forgotten, and queue tables full of dead rows vacuumed."""
        report = await super().enforce_retention(now)
        forgotten = await self._forget_ids(now)
        await self._vacuum_queue_tables()
        return replace(report, ids_forgotten=forgotten)

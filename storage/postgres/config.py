"""Stream configuration (type, retention, queue settings) on PostgreSQL."""

from __future__ import annotations

from typing import Any

from storage.errors import StorageUnavailable, StreamNotFound, StreamTypeChange
from storage.postgres.base import PostgresBase
from storage.records import StreamConfiguration, StreamType

_CONFIG_COLUMNS = (
    "stream_type, retention_max_age, retention_max_count, max_delivery_attempts, "
    "default_visibility_timeout, retry_initial_delay, retry_max_delay, retry_multiplier, "
    "deduplication_window"
)

# Creates the stream or replaces its settings in one statement. A NULL type keeps
# the stored one; the WHERE refuses to change a type already decided, in which
# case the stored row comes back with "stored" false (locked by the ON CONFLICT,
# so it is the row that refused). No row at all: the row was deleted, or made,
# by another call between this statement's snapshot and its insert; try again.
CONFIGURE_SQL = f"""
WITH upsert AS (
    INSERT INTO event_streaming.streams AS s (stream_name, {_CONFIG_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (stream_name) DO UPDATE
       SET stream_type = COALESCE(EXCLUDED.stream_type, s.stream_type),
           retention_max_age = EXCLUDED.retention_max_age,
           retention_max_count = EXCLUDED.retention_max_count,
           max_delivery_attempts = EXCLUDED.max_delivery_attempts,
           default_visibility_timeout = EXCLUDED.default_visibility_timeout,
           retry_initial_delay = EXCLUDED.retry_initial_delay,
           retry_max_delay = EXCLUDED.retry_max_delay,
           retry_multiplier = EXCLUDED.retry_multiplier,
           deduplication_window = EXCLUDED.deduplication_window
     WHERE EXCLUDED.stream_type IS NULL OR s.stream_type IS NULL
        OR s.stream_type = EXCLUDED.stream_type
    RETURNING {_CONFIG_COLUMNS}
)
SELECT true AS stored, {_CONFIG_COLUMNS} FROM upsert
UNION ALL
SELECT false, {_CONFIG_COLUMNS} FROM event_streaming.streams
 WHERE stream_name = $1 AND NOT EXISTS (SELECT 1 FROM upsert)
"""
#: Attempts before a configure that keeps racing other calls gives up (retryable).
_CONFIGURE_ATTEMPTS = 5

CONFIGURATION_SQL = f"SELECT {_CONFIG_COLUMNS} FROM event_streaming.streams WHERE stream_name = $1"


def _configuration(row: Any) -> StreamConfiguration:
    stream_type = row["stream_type"]
    return StreamConfiguration(
        stream_type=None if stream_type is None else StreamType(stream_type),
        retention_max_age=row["retention_max_age"],
        retention_max_count=row["retention_max_count"],
        max_delivery_attempts=row["max_delivery_attempts"],
        default_visibility_timeout=row["default_visibility_timeout"],
        retry_initial_delay=row["retry_initial_delay"],
        retry_max_delay=row["retry_max_delay"],
        retry_multiplier=row["retry_multiplier"],
        deduplication_window=row["deduplication_window"],
    )


class PostgresConfig(PostgresBase):
    async def configure_stream(
        self, stream_name: str, configuration: StreamConfiguration
    ) -> StreamConfiguration:
        wanted = configuration.stream_type
        for _ in range(_CONFIGURE_ATTEMPTS):
            row = await self.db.fetchrow(
                CONFIGURE_SQL,
                stream_name,
                None if wanted is None else int(wanted),
                configuration.retention_max_age,
                configuration.retention_max_count,
                configuration.max_delivery_attempts,
                configuration.default_visibility_timeout,
                configuration.retry_initial_delay,
                configuration.retry_max_delay,
                configuration.retry_multiplier,
                configuration.deduplication_window,
            )
            if row is None:
                continue
            if not row["stored"]:
                assert wanted is not None
                raise StreamTypeChange(stream_name, StreamType(row["stream_type"]), wanted)
            return _configuration(row)
        raise StorageUnavailable(
            f"stream '{stream_name}' kept changing under ConfigureStream; retry the call"
        )

    async def get_stream_configuration(self, stream_name: str) -> StreamConfiguration:
        row = await self.db.fetchrow(CONFIGURATION_SQL, stream_name)
        if row is None:
            raise StreamNotFound(stream_name)
        return _configuration(row)

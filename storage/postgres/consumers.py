"""Consumer-group offsets on PostgreSQL."""

from __future__ import annotations

import asyncpg

from storage.errors import ConsumerOffsetNotFound, OffsetOutOfRange, StreamNotFound, WrongStreamType
from storage.postgres.base import PostgresBase
from storage.postgres.errors import translates_errors
from storage.records import StreamType

# One statement: the upsert happens only when the stream is a log and the offset
# exists; the outer SELECT reports the stream's type and length either way.
COMMIT_OFFSET_SQL = """
WITH s AS (
    SELECT stream_id, stream_type, next_offset
      FROM event_streaming.streams WHERE stream_name = $1
), upsert AS (
    INSERT INTO event_streaming.consumer_offsets (stream_id, consumer_group, committed_offset)
    SELECT stream_id, $2, $3 FROM s WHERE s.stream_type = 1 AND $3 < s.next_offset
    ON CONFLICT (stream_id, consumer_group) DO UPDATE
       SET committed_offset = EXCLUDED.committed_offset, committed_at = clock_timestamp()
    RETURNING 1
)
SELECT s.stream_type, s.next_offset, EXISTS (SELECT 1 FROM upsert) AS committed FROM s
"""

GET_OFFSET_SQL = """
SELECT s.stream_type, c.committed_offset
  FROM event_streaming.streams s
  LEFT JOIN event_streaming.consumer_offsets c
         ON c.stream_id = s.stream_id AND c.consumer_group = $2
 WHERE s.stream_name = $1
"""


def _check_log(stream_name: str, stream_type: int | None) -> None:
    if stream_type is not None and stream_type != StreamType.PERSISTENT:
        raise WrongStreamType(stream_name, StreamType(stream_type), StreamType.PERSISTENT)


class PostgresConsumers(PostgresBase):
    @translates_errors
    async def commit_offset(self, stream_name: str, consumer_group: str, offset: int) -> None:
        try:
            row = await self.pool.fetchrow(COMMIT_OFFSET_SQL, stream_name, consumer_group, offset)
        except asyncpg.ForeignKeyViolationError:
            # The stream was deleted between the lookup and the upsert.
            raise StreamNotFound(stream_name) from None
        if row is None:
            raise StreamNotFound(stream_name)
        _check_log(stream_name, row["stream_type"])
        if not row["committed"]:
            raise OffsetOutOfRange(stream_name, offset, row["next_offset"] - 1)

    @translates_errors
    async def get_consumer_offset(self, stream_name: str, consumer_group: str) -> int:
        row = await self.pool.fetchrow(GET_OFFSET_SQL, stream_name, consumer_group)
        if row is None:
            raise StreamNotFound(stream_name)
        _check_log(stream_name, row["stream_type"])
        committed: int | None = row["committed_offset"]
        if committed is None:
            raise ConsumerOffsetNotFound(stream_name, consumer_group)
        return committed

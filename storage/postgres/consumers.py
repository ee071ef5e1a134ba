"""Consumer-group offsets on PostgreSQL."""

from __future__ import annotations

from storage.errors import ConsumerOffsetNotFound, OffsetOutOfRange, StreamNotFound
from storage.postgres.base import PostgresBase
from storage.records import ALL_STREAM, StreamType
from storage.rules import check_stream_type

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

COMMIT_ALL_OFFSET_SQL = "SELECT * FROM event_streaming.commit_all_offset($1, $2)"
GET_ALL_OFFSET_SQL = (
    "SELECT committed_position FROM event_streaming.all_consumer_offsets WHERE consumer_group = $1"
)

GET_OFFSET_SQL = """
SELECT s.stream_type, c.committed_offset
  FROM event_streaming.streams s
  LEFT JOIN event_streaming.consumer_offsets c
         ON c.stream_id = s.stream_id AND c.consumer_group = $2
 WHERE s.stream_name = $1
"""


class PostgresConsumers(PostgresBase):
    async def commit_offset(self, stream_name: str, consumer_group: str, offset: int) -> None:
        if stream_name == ALL_STREAM:
            row = await self.db.fetchrow(COMMIT_ALL_OFFSET_SQL, consumer_group, offset)
            assert row is not None
            if not row["committed"]:
                raise OffsetOutOfRange(stream_name, offset, row["newest"])
            return
        # A DeleteStream committing between the lookup and the upsert fails the
        # upsert's foreign key: StreamDeletedDuringCall, a StreamNotFound.
        row = await self.db.fetchrow(COMMIT_OFFSET_SQL, stream_name, consumer_group, offset)
        if row is None:
            raise StreamNotFound(stream_name)
        check_stream_type(stream_name, row["stream_type"], StreamType.PERSISTENT)
        if not row["committed"]:
            raise OffsetOutOfRange(stream_name, offset, row["next_offset"] - 1)

    async def get_consumer_offset(self, stream_name: str, consumer_group: str) -> int:
        if stream_name == ALL_STREAM:
            position: int | None = await self.db.fetchval(GET_ALL_OFFSET_SQL, consumer_group)
            if position is None:
                raise ConsumerOffsetNotFound(stream_name, consumer_group)
            return position
        row = await self.db.fetchrow(GET_OFFSET_SQL, stream_name, consumer_group)
        if row is None:
            raise StreamNotFound(stream_name)
        check_stream_type(stream_name, row["stream_type"], StreamType.PERSISTENT)
        committed: int | None = row["committed_offset"]
        if committed is None:
            raise ConsumerOffsetNotFound(stream_name, consumer_group)
        return committed

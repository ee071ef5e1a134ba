"""Stream administration on PostgreSQL: listing, deletion and retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncpg

from storage.errors import StreamNotFound
from storage.page_tokens import STREAMS, decode_page_token, encode_page_token
from storage.postgres.base import PostgresBase, session_advisory_lock
from storage.postgres.database import Session
from storage.records import RetentionReport, StreamPage, StreamSummary, StreamType
from storage.rules import first_page

log = logging.getLogger(__name__)

# ~<~ and friends compare byte-wise, the order of the text_pattern_ops index on
# stream_name and the order the in-memory backend lists in, whatever the collation.
LIST_STREAMS_SQL = """
SELECT stream_name, stream_type, next_offset
  FROM event_streaming.streams
 WHERE stream_name ~>=~ $1
   AND left(stream_name, char_length($1)) = $1
   AND ($2::text IS NULL OR stream_name ~>~ $2)
 ORDER BY stream_name USING ~<~
 LIMIT $3
"""

# Events, queue messages, dead letters, consumer offsets and the configuration all
# hang off the stream row (ON DELETE CASCADE).
DELETE_STREAM_SQL = "DELETE FROM event_streaming.streams WHERE stream_name = $1 RETURNING stream_id"

#: Key of the advisory lock held by the replica enforcing retention ("evsretn").
RETENTION_LOCK_KEY = 0x65767372_65746E00

RETENTION_STREAMS_SQL = """
SELECT stream_id, stream_name, next_offset, retention_max_age, retention_max_count
  FROM event_streaming.streams
 WHERE stream_type = 1
   AND (retention_max_age IS NOT NULL OR retention_max_count IS NOT NULL)
 ORDER BY stream_id
"""

# The offset below which a stream's events have expired: the first event young
# enough to keep by age, and the first of the newest retention_max_count. Offsets
# and timestamps grow together, so what goes is always a prefix of the log.
RETENTION_CUTOFF_SQL = """
SELECT greatest(
         CASE WHEN $3::interval IS NULL THEN 0
              ELSE coalesce(
                (SELECT stream_offset FROM event_streaming.events
                  WHERE stream_id = $1 AND created_at >= coalesce($5, clock_timestamp()) - $3
                  ORDER BY created_at, stream_offset LIMIT 1),
                $2) END,
         CASE WHEN $4::bigint IS NULL THEN 0 ELSE $2 - $4 END
       ) AS cutoff,
       (SELECT stream_offset FROM event_streaming.events
         WHERE stream_id = $1 ORDER BY stream_offset LIMIT 1) AS oldest
"""

# One bounded batch per statement (and so per transaction): a large backlog never
# holds locks or a snapshot for long, and appends go on between batches.
DELETE_BATCH_SQL = """
DELETE FROM event_streaming.events
 WHERE stream_id = $1 AND stream_offset >= $2 AND stream_offset < $3
"""

RETENTION_BATCH_SIZE = 5000


def _deleted_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 5000".
    return int(status.rsplit(" ", 1)[-1])


class PostgresAdmin(PostgresBase):
    async def list_streams(self, prefix: str, page_size: int, page_token: str) -> StreamPage:
        after = decode_page_token(STREAMS, page_token)
        rows = await self.db.fetch(LIST_STREAMS_SQL, prefix, after, page_size + 1)
        page, more = first_page(rows, page_size)
        summaries = tuple(
            StreamSummary(
                stream_name=r["stream_name"],
                stream_type=StreamType(r["stream_type"] or StreamType.PERSISTENT),
                length=r["next_offset"],
            )
            for r in page
        )
        token = encode_page_token(STREAMS, page[-1]["stream_name"]) if more else ""
        return StreamPage(summaries, token)

    async def delete_stream(self, stream_name: str) -> None:
        stream_id = await self.db.fetchval(DELETE_STREAM_SQL, stream_name)
        if stream_id is None:
            raise StreamNotFound(stream_name)
        # Subscribers and long polls on it, here and on other replicas, wake up and
        # find it gone.
        self._announce(stream_name)
        log.info("deleted stream %s", stream_name, extra={"stream_name": stream_name})

    async def enforce_retention(self, now: datetime | None = None) -> RetentionReport:
        async with (
            self.db.session() as conn,
            session_advisory_lock(conn, RETENTION_LOCK_KEY, wait=False) as taken,
        ):
            if not taken:
                log.info("retention skipped: another replica is enforcing it")
                return RetentionReport(streams_examined=0, events_deleted=0)
            streams = await conn.fetch(RETENTION_STREAMS_SQL)
            deleted = 0
            for stream in streams:
                deleted += await self._expire(conn, stream, now)
            return RetentionReport(streams_examined=len(streams), events_deleted=deleted)

    async def _expire(self, conn: Session, stream: asyncpg.Record, now: datetime | None) -> int:
        """Delete one stream's expired prefix in batches; returns how many went."""
        row = await conn.fetchrow(
            RETENTION_CUTOFF_SQL,
            stream["stream_id"],
            stream["next_offset"],
            stream["retention_max_age"],
            stream["retention_max_count"],
            now,
        )
        assert row is not None
        cutoff: int = row["cutoff"]
        low: int | None = row["oldest"]
        if low is None or low >= cutoff:
            return 0
        deleted = 0
        while low < cutoff:
            high = min(low + RETENTION_BATCH_SIZE, cutoff)
            deleted += _deleted_count(
                await conn.execute(DELETE_BATCH_SQL, stream["stream_id"], low, high)
            )
            low = high
            await asyncio.sleep(0)
        log.info(
            "retention deleted %d event(s) of %s; oldest offset now %d",
            deleted,
            stream["stream_name"],
            cutoff,
            extra={
                "stream_name": stream["stream_name"],
                "events_deleted": deleted,
                "oldest_offset": cutoff,
            },
        )
        return deleted

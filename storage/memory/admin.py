"""Stream administration for the in-memory backend: listing, deletion, retention."""

from __future__ import annotations

import logging
from datetime import datetime

from storage.memory.base import MemoryBase
from storage.memory.state import MemoryStream, utc_now
from storage.page_tokens import STREAMS, decode_page_token, encode_page_token
from storage.records import RetentionReport, StreamPage, StreamSummary, StreamType
from storage.rules import first_page

log = logging.getLogger(__name__)


def _expired_prefix(stream: MemoryStream, now: datetime) -> int:
    """How many of the oldest events the stream's retention policy removes."""
    config = stream.configuration
    count = 0
    if config.retention_max_count is not None:
        count = max(0, len(stream.events) - config.retention_max_count)
    if config.retention_max_age is not None:
        cutoff = now - config.retention_max_age
        # Timestamps grow with offsets, so the expired events are a prefix; stop at
        # the first one young enough to keep.
        aged = count
        while aged < len(stream.events) and stream.events[aged].timestamp < cutoff:
            aged += 1
        count = aged
    return count


class MemoryAdmin(MemoryBase):
    async def list_streams(self, prefix: str, page_size: int, page_token: str) -> StreamPage:
        after = decode_page_token(STREAMS, page_token)
        names = sorted(
            name
            for name in self._streams
            if name.startswith(prefix) and (after is None or name > after)
        )
        page, more = first_page(names, page_size)
        summaries = tuple(
            StreamSummary(
                stream_name=name,
                stream_type=self._streams[name].stream_type or StreamType.PERSISTENT,
                length=self._streams[name].next_offset,
            )
            for name in page
        )
        token = encode_page_token(STREAMS, page[-1]) if more else ""
        return StreamPage(summaries, token)

    async def delete_stream(self, stream_name: str) -> None:
        stream = self._find(stream_name)
        del self._streams[stream_name]
        # Its events leave the global log; the others keep their positions.
        self._forget(stream.events)
        # Subscribers and long polls on it wake up and find it gone.
        self.signals.notify(stream_name)
        log.info("deleted stream %s", stream_name, extra={"stream_name": stream_name})

    async def enforce_retention(self, now: datetime | None = None) -> RetentionReport:
        now = now or utc_now()
        examined = deleted = 0
        for stream in list(self._streams.values()):
            config = stream.configuration
            if stream.stream_type != StreamType.PERSISTENT or (
                config.retention_max_age is None and config.retention_max_count is None
            ):
                continue
            examined += 1
            count = _expired_prefix(stream, now)
            if not count:
                continue
            expired = stream.events[:count]
            for event in expired:
                stream.offsets_by_id.pop(event.event_id, None)
            del stream.events[:count]
            self._forget(expired)
            deleted += count
            log.info(
                "retention deleted %d event(s) of %s; oldest offset now %d",
                count,
                stream.name,
                stream.first_retained_offset,
                extra={
                    "stream_name": stream.name,
                    "events_deleted": count,
                    "oldest_offset": stream.first_retained_offset,
                },
            )
        return RetentionReport(streams_examined=examined, events_deleted=deleted)

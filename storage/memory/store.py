"""InMemoryEventStore: every capability over plain Python structures."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from storage.interface import EventStore
from storage.memory.admin import MemoryAdmin
from storage.memory.config import MemoryConfig
from storage.memory.consumers import MemoryConsumers
from storage.memory.log import MemoryLog
from storage.memory.queue import MemoryQueue
from storage.memory.state import utc_now
from storage.records import RetentionReport, StreamMetadata, StreamType


class InMemoryEventStore(
    MemoryLog, MemoryQueue, MemoryConfig, MemoryConsumers, MemoryAdmin, EventStore
):
    """The development backend: same semantics as PostgreSQL, nothing kept on exit."""

    async def get_stream_metadata(self, stream_name: str) -> StreamMetadata:
        stream = self._find(stream_name)
        if stream.stream_type == StreamType.EPHEMERAL:
            return self._queue_metadata(stream)
        return self._log_metadata(stream)

    async def enforce_retention(self, now: datetime | None = None) -> RetentionReport:
        report = await super().enforce_retention(now)
        return replace(report, ids_forgotten=self._forget_ids(now or utc_now()))

"""InMemoryEventStore: every capability over plain Python structures."""

from __future__ import annotations

from storage.interface import EventStore
from storage.memory.admin import MemoryAdmin
from storage.memory.config import MemoryConfig
from storage.memory.consumers import MemoryConsumers
from storage.memory.log import MemoryLog
from storage.memory.queue import MemoryQueue
from storage.records import StreamMetadata, StreamType


class InMemoryEventStore(
    MemoryLog, MemoryQueue, MemoryConfig, MemoryConsumers, MemoryAdmin, EventStore
):
    """The development backend: same semantics as PostgreSQL, nothing kept on exit."""

    async def get_stream_metadata(self, stream_name: str) -> StreamMetadata:
        stream = self._find(stream_name)
        if stream.stream_type == StreamType.EPHEMERAL:
            return self._queue_metadata(stream)
        return self._log_metadata(stream)

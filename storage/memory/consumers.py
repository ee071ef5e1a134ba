"""Consumer-group offsets for the in-memory backend."""

from __future__ import annotations

from storage.errors import ConsumerOffsetNotFound, OffsetOutOfRange
from storage.memory.base import MemoryBase
from storage.records import ALL_STREAM, StreamType


class MemoryConsumers(MemoryBase):
    async def commit_offset(self, stream_name: str, consumer_group: str, offset: int) -> None:
        if stream_name == ALL_STREAM:
            if offset > self._last_position:
                raise OffsetOutOfRange(stream_name, offset, self._last_position)
            self._all_offsets[consumer_group] = offset
            return
        stream = self._find(stream_name, StreamType.PERSISTENT)
        newest = stream.next_offset - 1
        if offset > newest:
            raise OffsetOutOfRange(stream_name, offset, newest)
        stream.consumer_offsets[consumer_group] = offset

    async def get_consumer_offset(self, stream_name: str, consumer_group: str) -> int:
        if stream_name == ALL_STREAM:
            position = self._all_offsets.get(consumer_group)
            if position is None:
                raise ConsumerOffsetNotFound(stream_name, consumer_group)
            return position
        stream = self._find(stream_name, StreamType.PERSISTENT)
        committed = stream.consumer_offsets.get(consumer_group)
        if committed is None:
            raise ConsumerOffsetNotFound(stream_name, consumer_group)
        return committed

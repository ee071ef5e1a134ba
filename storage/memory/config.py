"""Stream configuration (type, retention, queue settings) for the in-memory backend."""

from __future__ import annotations

from dataclasses import replace

from storage.errors import StreamTypeChange
from storage.memory.base import MemoryBase
from storage.records import StreamConfiguration


class MemoryConfig(MemoryBase):
    async def configure_stream(
        self, stream_name: str, configuration: StreamConfiguration
    ) -> StreamConfiguration:
        wanted = configuration.stream_type
        stream = self._streams.get(stream_name)
        if stream is None:
            stream = self._new_stream(stream_name, configuration)
        elif wanted is not None and stream.stream_type not in (None, wanted):
            assert stream.stream_type is not None
            raise StreamTypeChange(stream_name, stream.stream_type, wanted)
        if wanted is not None:
            stream.stream_type = wanted
        stream.configuration = replace(configuration, stream_type=stream.stream_type)
        return stream.configuration

    async def get_stream_configuration(self, stream_name: str) -> StreamConfiguration:
        stream = self._find(stream_name)
        return replace(stream.configuration, stream_type=stream.stream_type)

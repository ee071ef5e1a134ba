"""Shared state and stream lookup for the in-memory backend's capabilities."""

from __future__ import annotations

from storage.errors import StreamNotFound, WrongStreamType
from storage.memory.state import MemoryStream, utc_now
from storage.records import StreamConfiguration, StreamType
from storage.signals import StreamSignals


class MemoryBase:
    """Holds every stream. asyncio runs one task at a time, so a method that does
    not await between reading and writing state is atomic without locks."""

    def __init__(self) -> None:
        self._streams: dict[str, MemoryStream] = {}
        self.signals = StreamSignals()

    def _find(self, stream_name: str, wanted: StreamType | None = None) -> MemoryStream:
        stream = self._streams.get(stream_name)
        if stream is None:
            raise StreamNotFound(stream_name)
        if wanted is not None and stream.stream_type not in (None, wanted):
            raise WrongStreamType(stream_name, stream.stream_type, wanted)
        return stream

    def _find_or_create(self, stream_name: str, wanted: StreamType) -> MemoryStream:
        stream = self._streams.get(stream_name)
        if stream is None:
            stream = MemoryStream(
                name=stream_name,
                stream_type=wanted,
                created_at=utc_now(),
                configuration=StreamConfiguration(stream_type=wanted),
            )
            self._streams[stream_name] = stream
        elif stream.stream_type is None:
            stream.stream_type = wanted
        elif stream.stream_type != wanted:
            raise WrongStreamType(stream_name, stream.stream_type, wanted)
        return stream

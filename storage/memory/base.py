"""Shared state and stream lookup for the in-memory backend's capabilities."""

from __future__ import annotations

from collections.abc import Iterable

from storage.errors import StreamNotFound
from storage.memory.state import MemoryStream, utc_now
from storage.records import RecordedEvent, StreamConfiguration, StreamType
from storage.rules import DEFAULT_PAGE_BYTES, check_stream_type
from storage.signals import StreamSignals


class MemoryBase:
    """Holds every stream. asyncio runs one task at a time, so a method that does
    not await between reading and writing state is atomic without locks."""

    def __init__(self, *, page_bytes: int = DEFAULT_PAGE_BYTES) -> None:
        self._streams: dict[str, MemoryStream] = {}
        self.signals = StreamSignals()
        self.page_bytes = page_bytes
        #: The global log: every retained event of every log, in position order.
        self._log: list[RecordedEvent] = []
        #: The position of the newest event ever appended (positions never return).
        self._last_position = 0
        #: Consumer groups' committed positions in the global log.
        self._all_offsets: dict[str, int] = {}

    def _forget(self, events: Iterable[RecordedEvent]) -> None:
        """Take deleted events (a deleted stream, a retention prefix) out of the
        global log; the rest keep their positions."""
        gone = {e.global_position for e in events}
        if gone:
            self._log = [e for e in self._log if e.global_position not in gone]

    def _find(self, stream_name: str, wanted: StreamType | None = None) -> MemoryStream:
        stream = self._streams.get(stream_name)
        if stream is None:
            raise StreamNotFound(stream_name)
        if wanted is not None:
            check_stream_type(stream_name, stream.stream_type, wanted)
        return stream

    def _writable(self, stream_name: str, wanted: StreamType) -> MemoryStream | None:
        """The stream a write of type ``wanted`` goes to; None when it is still to be
        made. Raises WrongStreamType. Nothing is made or typed here: a write does
        that with :meth:`_written` once it knows it succeeds."""
        stream = self._streams.get(stream_name)
        if stream is not None:
            check_stream_type(stream_name, stream.stream_type, wanted)
        return stream

    def _written(
        self, stream_name: str, stream: MemoryStream | None, wanted: StreamType
    ) -> MemoryStream:
        """The stream a successful write of type ``wanted`` goes to, made (or typed)
        now."""
        if stream is None:
            stream = self._new_stream(stream_name, StreamConfiguration(stream_type=wanted))
        stream.stream_type = wanted
        return stream

    def _new_stream(self, stream_name: str, configuration: StreamConfiguration) -> MemoryStream:
        stream = MemoryStream(
            name=stream_name,
            stream_type=configuration.stream_type,
            created_at=utc_now(),
            configuration=configuration,
        )
        self._streams[stream_name] = stream
        return stream

"""Where a subscription stands, and the request that resumes it: shared by the
asyncio and the blocking subscription, which differ only in how they wait.

A subscription remembers the offset (a stream) or the global position (``$all``)
of the last event it handed out, and the place the server said live delivery
continues (``CaughtUp``) or the filter has scanned up to (``AllCheckpoint``). On
reconnect it asks for the first offset after all of these: no event is handed out
twice and none is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventstreaming_client import _convert
from eventstreaming_client.errors import EventStreamingError, InternalError, Unavailable
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import ALL, RecordedEvent


@dataclass
class SubscriptionStart:
    """What the caller asked for."""

    stream_name: str
    from_offset: int | None = None
    from_end: bool = False
    consumer_group: str | None = None
    from_time: datetime | None = None
    event_types: Sequence[str] = ()
    stream_prefixes: Sequence[str] = ()
    checkpoint_interval: int = 0

    def __post_init__(self) -> None:
        chosen = sum((self.from_offset is not None, self.from_end, self.consumer_group is not None))
        if chosen > 1:
            raise ValueError("give at most one of from_offset, from_end and consumer_group")
        if self.stream_prefixes and not self.is_all:
            raise ValueError("stream_prefixes filter the global log: subscribe to '$all'")
        if self.from_time is not None and self.is_all:
            raise ValueError("from_time applies to one stream, not to '$all'")

    @property
    def is_all(self) -> bool:
        return self.stream_name == ALL


@dataclass
class ResumePoint:
    """The subscription's progress; ``next`` is where a new call must start."""

    start: SubscriptionStart
    #: Offset or position of the last event handed out (None: none yet).
    last: int | None = None
    #: The first offset or position not yet delivered, when the server said so.
    next: int | None = None
    caught_up: bool = False
    _seen_marker: bool = field(default=False, repr=False)

    def position_of(self, event: RecordedEvent) -> int:
        return event.global_position if self.start.is_all else event.offset

    def accept(self, event: RecordedEvent) -> bool:
        """Record an event; False when it is one already handed out (never expected
        from the server, but a duplicate must not reach the caller)."""
        position = self.position_of(event)
        if self.last is not None and position <= self.last:
            return False
        if self.next is not None and position < self.next:
            return False
        self.last = position
        self.next = position + 1
        return True

    def on_caught_up(self, marker: pb.CaughtUp) -> None:
        self.caught_up = True
        value = marker.next_position if self.start.is_all else marker.next_offset
        # The first live event comes at or after this place.
        if self.next is None or value > self.next:
            self.next = value

    def on_checkpoint(self, position: int) -> None:
        if self.next is None or position + 1 > self.next:
            self.next = position + 1

    def request(self) -> Any:
        """The request of the next call: the caller's start at first, then always
        the first offset or position not yet handed out."""
        s = self.start
        resume_at = self.next
        if s.is_all:
            return _convert.subscribe_to_all_request(
                from_position=resume_at if resume_at is not None else s.from_offset,
                from_end=s.from_end and resume_at is None,
                consumer_group=s.consumer_group if resume_at is None else None,
                stream_prefixes=s.stream_prefixes,
                event_types=s.event_types,
                checkpoint_interval=s.checkpoint_interval,
            )
        return _convert.subscribe_to_stream_request(
            s.stream_name,
            from_offset=resume_at if resume_at is not None else s.from_offset,
            from_end=s.from_end and resume_at is None,
            consumer_group=s.consumer_group if resume_at is None else None,
            from_time=s.from_time,
            event_types=s.event_types,
        )


def should_reconnect(error: EventStreamingError) -> bool:
    """A broken connection or a server going away: subscribe again and resume.
    gRPC reports a connection reset mid-stream as INTERNAL ("RST_STREAM")."""
    if isinstance(error, Unavailable):
        return True
    return isinstance(error, InternalError) and "RST_STREAM" in error.message

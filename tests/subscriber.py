"""A test-side subscriber: reads a SubscribeToStream (or SubscribeToAll) call item by
item, with timeouts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc


@dataclass
class Subscriber:
    """Wraps one call; remembers every event and every CaughtUp it saw, in order."""

    call: Any
    events: list[pb.Event] = field(default_factory=list)
    #: Each CaughtUp's next offset (or, for the global log, next position).
    caught_up: list[int] = field(default_factory=list)
    #: Position in the call's items at which each CaughtUp arrived (events before it).
    caught_up_after: list[int] = field(default_factory=list)
    #: The global log's checkpoints, with how many events had arrived before each.
    checkpoints: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def open(cls, stub: pb_grpc.EventStreamingStub, name: str, **start: Any) -> Subscriber:
        return cls(stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_name=name, **start)))

    @classmethod
    def open_all(cls, stub: pb_grpc.EventStreamingStub, **request: Any) -> Subscriber:
        """A subscription to the global log."""
        return cls(stub.SubscribeToAll(pb.SubscribeToAllRequest(**request)))

    async def next(
        self, timeout: float = 10.0
    ) -> pb.SubscribeToStreamResponse | pb.SubscribeToAllResponse:
        item = await asyncio.wait_for(self.call.read(), timeout)
        if item is grpc.aio.EOF:
            raise AssertionError("the subscription ended")
        assert isinstance(item, pb.SubscribeToStreamResponse | pb.SubscribeToAllResponse)
        if item.HasField("caught_up"):
            caught_up = item.caught_up
            self.caught_up.append(
                caught_up.next_position
                if isinstance(item, pb.SubscribeToAllResponse)
                else caught_up.next_offset
            )
            self.caught_up_after.append(len(self.events))
        elif isinstance(item, pb.SubscribeToAllResponse) and item.HasField("checkpoint"):
            self.checkpoints.append((item.checkpoint.position, len(self.events)))
        else:
            self.events.append(item.event)
        return item

    async def until_caught_up(self, timeout: float = 10.0) -> list[pb.Event]:
        """Read until the (first) CaughtUp; returns the events read before it."""
        while not self.caught_up:
            await self.next(timeout)
        return self.events[: self.caught_up_after[0]]

    async def until_events(self, count: int, timeout: float = 10.0) -> list[pb.Event]:
        """Read until ``count`` events in all have arrived."""
        while len(self.events) < count:
            await self.next(timeout)
        return self.events

    async def error(self, timeout: float = 10.0) -> grpc.aio.AioRpcError:
        """Read until the call fails; returns its error."""
        try:
            while True:
                await self.next(timeout)
        except grpc.aio.AioRpcError as exc:
            return exc

    def cancel(self) -> None:
        self.call.cancel()

"""Consumer RPCs: CommitOffset, GetConsumerOffset, SubscribeToStream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase
from server.rpc.log import read_filter
from server.subscriptions import CaughtUp, Subscription
from storage.errors import ConsumerOffsetNotFound


class ConsumerRpcs(RpcBase):
    async def CommitOffset(
        self, request: pb.CommitOffsetRequest, context: Context
    ) -> pb.CommitOffsetResponse:
        """Record the last offset a consumer group has processed."""
        name = validation.stream_name(request.stream_name)
        group = validation.identifier(request.consumer_group, "consumer_group")
        offset = validation.offset(request.offset, "offset")
        await self.store.commit_offset(name, group, offset)
        return pb.CommitOffsetResponse()

    async def GetConsumerOffset(
        self, request: pb.GetConsumerOffsetRequest, context: Context
    ) -> pb.GetConsumerOffsetResponse:
        """A consumer group's committed offset."""
        name = validation.stream_name(request.stream_name)
        group = validation.identifier(request.consumer_group, "consumer_group")
        return pb.GetConsumerOffsetResponse(
            offset=await self.store.get_consumer_offset(name, group)
        )

    async def SubscribeToStream(
        self, request: pb.SubscribeToStreamRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeToStreamResponse]:
        """History from the chosen start, one CaughtUp, then live events."""
        name = validation.stream_name(request.stream_name)
        replay = read_filter(request)
        start = await self._start_offset(name, request)
        subscription = Subscription(self.store, name, start, replay)
        async for item in subscription.items():
            if isinstance(item, CaughtUp):
                yield pb.SubscribeToStreamResponse(
                    caught_up=pb.CaughtUp(next_offset=item.next_offset)
                )
            else:
                response = pb.SubscribeToStreamResponse()
                convert.fill_event(response.event, item)
                yield response

    async def _start_offset(self, name: str, request: pb.SubscribeToStreamRequest) -> int:
        start = request.WhichOneof("start")
        if start == "from_offset":
            return validation.offset(request.from_offset, "from_offset")
        if start == "from_end":
            if not request.from_end:
                # from_end=false says nothing about where to start: from the beginning.
                return 0
            return await self.store.get_stream_length(name)
        if start == "consumer_group":
            group = validation.identifier(request.consumer_group, "consumer_group")
            try:
                return await self.store.get_consumer_offset(name, group) + 1
            except ConsumerOffsetNotFound:
                return 0
        return 0

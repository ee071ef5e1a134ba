"""Consumer RPCs: CommitOffset, GetConsumerOffset, SubscribeToStream, SubscribeToAll."""

from __future__ import annotations

from collections.abc import AsyncIterator

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase


class ConsumerRpcs(RpcBase):
    async def CommitOffset(
        self, request: pb.CommitOffsetRequest, context: Context
    ) -> pb.CommitOffsetResponse:
        """Record the last offset a consumer group has processed."""
        await self.store.commit_offset(*validation.commit_request(request))
        return pb.CommitOffsetResponse()

    async def GetConsumerOffset(
        self, request: pb.GetConsumerOffsetRequest, context: Context
    ) -> pb.GetConsumerOffsetResponse:
        """A consumer group's committed offset."""
        offset = await self.store.get_consumer_offset(*validation.consumer_offset_request(request))
        return pb.GetConsumerOffsetResponse(offset=offset)

    async def SubscribeToStream(
        self, request: pb.SubscribeToStreamRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeToStreamResponse]:
        """History from the chosen start, one CaughtUp, then live events."""
        async for item in self.subscriptions.follow(validation.subscribe_request(request)):
            yield convert.subscription_response(item)

    async def SubscribeToAll(
        self, request: pb.SubscribeToAllRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeToAllResponse]:
        """The global log from the chosen start, one CaughtUp, then live events, with
        checkpoints for a filter that rarely matches."""
        args = validation.subscribe_all_request(request)
        async for item in self.subscriptions.follow_all(args):
            yield convert.all_subscription_response(item)

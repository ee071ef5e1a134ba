"""Stream administration RPCs: ListStreams, DeleteStream."""

from __future__ import annotations

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase


class AdminRpcs(RpcBase):
    async def ListStreams(
        self, request: pb.ListStreamsRequest, context: Context
    ) -> pb.ListStreamsResponse:
        """Streams in name order, optionally under a prefix, one page at a time."""
        page = await self.store.list_streams(*validation.list_streams_request(request))
        return convert.list_streams_response(page)

    async def DeleteStream(
        self, request: pb.DeleteStreamRequest, context: Context
    ) -> pb.DeleteStreamResponse:
        """Delete a stream and everything of it."""
        await self.store.delete_stream(validation.stream_name(request.stream_name))
        return pb.DeleteStreamResponse()

"""Persistent stream RPCs: AppendToStream, ReadStream, GetStreamLength, GetStreamMetadata."""

from __future__ import annotations

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase


class LogRpcs(RpcBase):
    async def AppendToStream(
        self, request: pb.AppendToStreamRequest, context: Context
    ) -> pb.AppendToStreamResponse:
        """Append a batch atomically (see the proto for expectations and retries)."""
        result = await self.store.append_to_stream(*validation.append_request(request))
        return convert.append_response(result)

    async def ReadStream(
        self, request: pb.ReadStreamRequest, context: Context
    ) -> pb.ReadStreamResponse:
        """Read a page of events from an offset, optionally filtered."""
        result = await self.store.read_stream(*validation.read_request(request))
        return convert.read_response(result)

    async def GetStreamLength(
        self, request: pb.GetStreamLengthRequest, context: Context
    ) -> pb.GetStreamLengthResponse:
        """Events ever appended."""
        name = validation.stream_name(request.stream_name)
        return pb.GetStreamLengthResponse(length=await self.store.get_stream_length(name))

    async def GetStreamMetadata(
        self, request: pb.GetStreamMetadataRequest, context: Context
    ) -> pb.GetStreamMetadataResponse:
        """A stream's statistics."""
        name = validation.stream_name(request.stream_name)
        return convert.metadata_response(await self.store.get_stream_metadata(name))

"""Persistent stream and global log RPCs: AppendToStream, AppendToStreams,
AppendSession, ReadStream, ReadAll, GetStreamLength, GetStreamMetadata."""

from __future__ import annotations

from collections.abc import AsyncIterable

from server import convert, validation
from server.calls import Undecodable
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase


class LogRpcs(RpcBase):
    async def AppendToStream(
        self, request: pb.AppendToStreamRequest, context: Context
    ) -> pb.AppendToStreamResponse:
        """Append a batch atomically (see the proto for expectations and retries)."""
        result = await self.store.append_to_stream(*validation.append_request(request))
        return convert.append_response(result)

    async def AppendToStreams(
        self, request: pb.AppendToStreamsRequest, context: Context
    ) -> pb.AppendToStreamsResponse:
        """Append to several streams (and commit a checkpoint), all or nothing."""
        results = await self.store.append_to_streams(*validation.append_streams_request(request))
        return convert.append_streams_response(results)

    async def AppendSession(
        self,
        requests: AsyncIterable[pb.AppendSessionRequest | Undecodable],
        context: Context,
    ) -> None:
        """AppendToStreams requests over one stream, each answered by its id."""
        await self.sessions.serve(requests, context.write)

    async def ReadAll(self, request: pb.ReadAllRequest, context: Context) -> pb.ReadAllResponse:
        """Read a page of the global log, forward or backward, optionally filtered."""
        from_position, max_count, read_filter, backward = validation.read_all_request(request)
        page = await self.store.read_all(from_position, max_count, read_filter, backward=backward)
        return convert.read_all_response(page)

    async def ReadStream(
        self, request: pb.ReadStreamRequest, context: Context
    ) -> pb.ReadStreamResponse:
        """Read a page of events from an offset, optionally filtered."""
        name, from_offset, max_count, read_filter, backward = validation.read_request(request)
        result = await self.store.read_stream(
            name, from_offset, max_count, read_filter, backward=backward
        )
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

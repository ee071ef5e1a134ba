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
        prefix = request.prefix
        # Every non-empty start of a valid stream name is itself a valid name.
        if prefix and not validation.STREAM_NAME_RE.fullmatch(prefix):
            raise validation.InvalidArgument(
                "prefix",
                f"{prefix[:220]!r} cannot start a stream name: use up to 200 characters "
                "of A-Z a-z 0-9 . _ : - starting with a letter or a digit",
            )
        page_size = validation.page_size(request.page_size, "page_size")
        page = await self.store.list_streams(prefix, page_size, request.page_token)
        return pb.ListStreamsResponse(
            streams=[
                pb.StreamSummary(
                    stream_name=s.stream_name,
                    stream_type=convert.stream_type(s.stream_type),
                    length=s.length,
                )
                for s in page.streams
            ],
            next_page_token=page.next_page_token,
        )

    async def DeleteStream(
        self, request: pb.DeleteStreamRequest, context: Context
    ) -> pb.DeleteStreamResponse:
        """Delete a stream and everything of it."""
        name = validation.stream_name(request.stream_name)
        await self.store.delete_stream(name)
        return pb.DeleteStreamResponse()

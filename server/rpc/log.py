"""Persistent stream RPCs: AppendToStream, ReadStream, GetStreamLength, GetStreamMetadata."""

from __future__ import annotations

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase
from storage.records import ReadFilter


def read_filter(request: pb.ReadStreamRequest | pb.SubscribeToStreamRequest) -> ReadFilter:
    """The replay options of a read or subscription request."""
    for i, event_type in enumerate(request.event_types):
        if not event_type:
            raise validation.InvalidArgument(f"event_types[{i}]", "must not be empty")
    return ReadFilter(
        from_timestamp=(
            validation.timestamp(request.from_timestamp, "from_timestamp")
            if request.HasField("from_timestamp")
            else None
        ),
        event_types=frozenset(request.event_types),
    )


class LogRpcs(RpcBase):
    async def AppendToStream(
        self, request: pb.AppendToStreamRequest, context: Context
    ) -> pb.AppendToStreamResponse:
        """Append a batch atomically (see the proto for expectations and retries)."""
        name = validation.stream_name(request.stream_name)
        expected: int | None = None
        if request.HasField("expected_last_offset"):
            expected = request.expected_last_offset
            if expected < -1:
                raise validation.InvalidArgument(
                    "expected_last_offset", f"is {expected}; use -1 (no events) or an offset >= 0"
                )
        events = validation.new_events(request.events)
        result = await self.store.append_to_stream(name, events, expected)
        return pb.AppendToStreamResponse(
            first_offset=result.first_offset, last_offset=result.last_offset
        )

    async def ReadStream(
        self, request: pb.ReadStreamRequest, context: Context
    ) -> pb.ReadStreamResponse:
        """Read a page of events from an offset, optionally filtered."""
        name = validation.stream_name(request.stream_name)
        from_offset = validation.offset(request.from_offset, "from_offset")
        max_count = validation.page_size(request.max_count, "max_count")
        result = await self.store.read_stream(name, from_offset, max_count, read_filter(request))
        response = pb.ReadStreamResponse(
            next_offset=result.next_offset, end_of_stream=result.end_of_stream
        )
        convert.add_events(response.events, result.events)
        return response

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
        meta = await self.store.get_stream_metadata(name)
        return pb.GetStreamMetadataResponse(
            stream_name=meta.stream_name,
            stream_type=convert.stream_type(meta.stream_type),
            length=meta.length,
            retained_count=meta.retained_count,
            oldest_offset=meta.oldest_offset,
            newest_offset=meta.newest_offset,
            oldest_event_timestamp=convert.optional_timestamp(meta.oldest_event_timestamp),
            newest_event_timestamp=convert.optional_timestamp(meta.newest_event_timestamp),
            created_at=convert.timestamp(meta.created_at),
            pending_count=meta.pending_count,
            in_flight_count=meta.in_flight_count,
            dead_letter_count=meta.dead_letter_count,
        )

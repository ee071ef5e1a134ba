"""Stream configuration RPCs: ConfigureStream, GetStreamConfiguration."""

from __future__ import annotations

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase


class ConfigRpcs(RpcBase):
    async def ConfigureStream(
        self, request: pb.ConfigureStreamRequest, context: Context
    ) -> pb.ConfigureStreamResponse:
        """Create a stream or replace its configuration."""
        stored = await self.store.configure_stream(*validation.configure_request(request))
        return pb.ConfigureStreamResponse(configuration=convert.configuration(stored))

    async def GetStreamConfiguration(
        self, request: pb.GetStreamConfigurationRequest, context: Context
    ) -> pb.GetStreamConfigurationResponse:
        """A stream's configuration, defaults filled in."""
        name = validation.stream_name(request.stream_name)
        config = await self.store.get_stream_configuration(name)
        return pb.GetStreamConfigurationResponse(configuration=convert.configuration(config))

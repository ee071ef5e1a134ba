"""The EventStreaming servicer: every capability's RPCs on one class."""

from __future__ import annotations

from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.rpc.log import LogRpcs


class EventStreamingServicer(LogRpcs, pb_grpc.EventStreamingServicer):  # type: ignore[misc]
    """Thin: validates, converts, calls storage. Errors are mapped to statuses by
    server.interceptors.ErrorMappingInterceptor."""

"""The EventStreaming servicer: every capability's RPCs on one class."""

from __future__ import annotations

from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.rpc.admin import AdminRpcs
from server.rpc.config import ConfigRpcs
from server.rpc.consumers import ConsumerRpcs
from server.rpc.log import LogRpcs
from server.rpc.queue import QueueRpcs


class EventStreamingServicer(
    LogRpcs,
    QueueRpcs,
    ConfigRpcs,
    ConsumerRpcs,
    AdminRpcs,
    pb_grpc.EventStreamingServicer,  # type: ignore[misc]
):
    """Thin: validates, converts, calls storage. Errors are mapped to statuses by
    server.calls.CallPath."""

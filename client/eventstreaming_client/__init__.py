"""Python client of the EventStreaming service.

``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio) offer every RPC as
a typed method taking and returning plain Python values; errors are the exceptions
of :mod:`eventstreaming_client.errors`. ``eventstreaming_client.eventsourcing`` is a
persistence module for the eventsourcing library (install the ``eventsourcing``
extra).
"""

from eventstreaming_client.aio import AsyncClient, AsyncSubscription, AsyncWorker
from eventstreaming_client.errors import (
    AlreadyExists,
    CheckpointAlreadyCommitted,
    ConsumerOffsetNotFound,
    DeadlineExceeded,
    DuplicateEvent,
    EventStreamingError,
    FailedPrecondition,
    InvalidArgument,
    MessageNotFound,
    MessageNotHeld,
    NotFound,
    OutOfRange,
    StreamNotFound,
    Unauthenticated,
    Unavailable,
    WrongExpectedOffset,
    WrongStreamType,
    handle_rpc_error,
)
from eventstreaming_client.models import (
    ALL,
    NO_EVENTS,
    AckResult,
    AppendResult,
    ConsumerCheckpoint,
    DeadLetter,
    DeadLetterPage,
    NewEvent,
    QueueMessage,
    ReadAllResult,
    ReadResult,
    RecordedEvent,
    StreamAppend,
    StreamConfiguration,
    StreamMetadata,
    StreamPage,
    StreamSummary,
    StreamType,
)
from eventstreaming_client.options import ConnectionOptions, RetryPolicy
from eventstreaming_client.sync import Client, Subscription, Worker

__all__ = [
    "ALL",
    "NO_EVENTS",
    "AckResult",
    "AlreadyExists",
    "AppendResult",
    "AsyncClient",
    "AsyncSubscription",
    "AsyncWorker",
    "CheckpointAlreadyCommitted",
    "Client",
    "ConnectionOptions",
    "ConsumerCheckpoint",
    "ConsumerOffsetNotFound",
    "DeadLetter",
    "DeadLetterPage",
    "DeadlineExceeded",
    "DuplicateEvent",
    "EventStreamingError",
    "FailedPrecondition",
    "InvalidArgument",
    "MessageNotFound",
    "MessageNotHeld",
    "NewEvent",
    "NotFound",
    "OutOfRange",
    "QueueMessage",
    "ReadAllResult",
    "ReadResult",
    "RecordedEvent",
    "RetryPolicy",
    "StreamAppend",
    "StreamConfiguration",
    "StreamMetadata",
    "StreamNotFound",
    "StreamPage",
    "StreamSummary",
    "StreamType",
    "Subscription",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "WrongExpectedOffset",
    "WrongStreamType",
    "handle_rpc_error",
]

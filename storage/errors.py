"""The one error hierarchy every backend raises; callers never see driver errors."""

from __future__ import annotations

from uuid import UUID

from storage.records import StreamType


class StorageError(Exception):
    """Base of every storage error."""


class StreamNotFound(StorageError):
    def __init__(self, stream_name: str) -> None:
        super().__init__(f"stream '{stream_name}' does not exist")
        self.stream_name = stream_name


class StreamDeletedDuringCall(StreamNotFound):
    """The stream was deleted while the call was writing to it: the write is undone,
    as if the delete had come first."""

    def __init__(self) -> None:
        StorageError.__init__(
            self, "the stream was deleted while this call ran; nothing was written"
        )
        self.stream_name = ""


class WrongStreamType(StorageError):
    """A log operation on a queue, or a queue operation on a log."""

    def __init__(self, stream_name: str, actual: StreamType, wanted: StreamType) -> None:
        super().__init__(
            f"stream '{stream_name}' is {actual.label}; this operation needs "
            f"{wanted.with_article} stream"
        )
        self.stream_name = stream_name
        self.actual = actual
        self.wanted = wanted


class WrongExpectedOffset(StorageError):
    """The optimistic concurrency check of an append failed."""

    def __init__(self, stream_name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream '{stream_name}': expected_last_offset was {expected} but the "
            f"actual last offset is {actual}"
        )
        self.stream_name = stream_name
        self.expected = expected
        self.actual = actual


class DuplicateEvent(StorageError):
    """A batch partly repeats event ids already in the stream."""

    def __init__(self, stream_name: str, event_id: UUID, message: str | None = None) -> None:
        super().__init__(
            message
            or f"stream '{stream_name}': event_id {event_id} is already in the stream "
            "and the batch is not an exact repeat of an earlier append"
        )
        self.stream_name = stream_name
        self.event_id = event_id


class DuplicateMessage(DuplicateEvent):
    """An enqueued id is already in the queue (pending, in flight or dead-lettered)."""

    def __init__(self, stream_name: str, event_id: UUID) -> None:
        super().__init__(
            stream_name,
            event_id,
            f"queue '{stream_name}': a message with event_id {event_id} is already in the "
            "queue or its dead-letter queue; nothing of the batch was enqueued",
        )


class MessageNotFound(StorageError):
    def __init__(self, stream_name: str, event_id: UUID) -> None:
        super().__init__(f"stream '{stream_name}': no message with event_id {event_id}")
        self.stream_name = stream_name
        self.event_id = event_id


class MessageNotHeld(StorageError):
    def __init__(self, stream_name: str, event_id: UUID, consumer_id: str) -> None:
        super().__init__(
            f"stream '{stream_name}': message {event_id} is not held by consumer '{consumer_id}'"
        )
        self.stream_name = stream_name
        self.event_id = event_id
        self.consumer_id = consumer_id


class ConsumerOffsetNotFound(StorageError):
    def __init__(self, stream_name: str, consumer_group: str) -> None:
        super().__init__(
            f"consumer group '{consumer_group}' has never committed an offset on "
            f"stream '{stream_name}'"
        )
        self.stream_name = stream_name
        self.consumer_group = consumer_group


class OffsetOutOfRange(StorageError):
    def __init__(self, stream_name: str, offset: int, newest: int) -> None:
        super().__init__(
            f"stream '{stream_name}': offset {offset} is beyond the newest offset {newest}"
        )
        self.stream_name = stream_name
        self.offset = offset
        self.newest = newest


class StreamTypeChange(StorageError):
    """ConfigureStream asked to change the type of a stream that has one."""

    def __init__(self, stream_name: str, actual: StreamType, wanted: StreamType) -> None:
        super().__init__(
            f"stream '{stream_name}' is {actual.label}; its type cannot be changed "
            f"to {wanted.label}"
        )
        self.stream_name = stream_name
        self.actual = actual
        self.wanted = wanted


class InvalidPageToken(StorageError):
    """A page token that this service did not issue (tokens are opaque: the message
    never echoes one back, however long)."""

    def __init__(self) -> None:
        super().__init__(
            "page_token: is not a token this service issued; pass back next_page_token "
            "exactly as received, or an empty token for the first page"
        )


class StorageUnavailable(StorageError):
    """The backing store cannot be reached (connection refused, lost, timed out)."""


class MigrationError(StorageError):
    """The database schema cannot be brought up to date."""

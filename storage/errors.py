"""The one error hierarchy every backend raises; callers never see driver errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class WrongExpectedOffsets(StorageError):
    """The expectations of one or more streams of an atomic append to several
    streams failed; nothing was written."""

    def __init__(self, failures: Sequence[WrongExpectedOffset]) -> None:
        super().__init__(
            "nothing was written: "
            + "; ".join(
                f"stream '{f.stream_name}' expected_last_offset {f.expected}, actual {f.actual}"
                for f in failures
            )
        )
        self.failures = tuple(failures)


class CheckpointExists(StorageError):
    """The consumer group's committed offset is already at or past the checkpoint:
    that input was processed before, and nothing was written."""

    def __init__(self, stream_name: str, consumer_group: str, committed: int) -> None:
        super().__init__(
            f"consumer group '{consumer_group}' has already committed offset {committed} on "
            f"'{stream_name}': the input was processed before; nothing was written"
        )
        self.stream_name = stream_name
        self.consumer_group = consumer_group
        self.committed = committed


class DuplicateEvent(StorageError):
    """A batch partly repeats event ids already in the stream."""

    def __init__(self, stream_name: str, event_id: UUID) -> None:
        super().__init__(
            f"stream '{stream_name}': event_id {event_id} is already in the stream "
            "and the batch is not an exact repeat of an earlier append"
        )
        self.stream_name = stream_name
        self.event_id = event_id


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


class InvalidDatabaseUrl(StorageError):
    """The database URL cannot be read the one way the driver reads it. The message
    shows the URL with its password masked and never quotes a piece of it, since a
    mis-parse can put the password anywhere."""

    def __init__(self, masked_url: str, reason: str) -> None:
        super().__init__(f"not a valid PostgreSQL URL ({masked_url}): {reason}")
        self.masked_url = masked_url
        self.reason = reason


#: How start-up errors name the limits they ran into, unless the caller names its
#: own settings (the server names its environment variables).
DEFAULT_LIMIT_NAMES: Mapping[str, str] = {
    "connect_timeout": "connect timeout",
    "statement_timeout": "statement timeout",
    "startup_timeout": "startup timeout",
}


class DatabaseStartupError(StorageError):
    """The database cannot be used at start-up. Carries what a one-line report
    needs: where (``address``, ``database``), why (``reason``: a sentence from the
    server or the network, never the password), and which limit ran out, if one
    did, so that :meth:`describe` can name the setting to change."""

    def __init__(
        self,
        reason: str,
        *,
        address: str,
        database: str,
        limit: str | None = None,
        waited: float | None = None,
    ) -> None:
        self.reason = reason
        self.address = address
        self.database = database
        #: "connect_timeout" or "statement_timeout" when the reason is that limit.
        self.limit = limit
        #: Seconds spent retrying before giving up (None: no retrying was done).
        self.waited = waited
        super().__init__(self.describe())

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        """The one-line explanation; ``names`` (keys as in DEFAULT_LIMIT_NAMES)
        says what to call the limits, so a caller can point at its own settings."""
        named = {**DEFAULT_LIMIT_NAMES, **(names or {})}
        text = f'PostgreSQL at {self.address} (database "{self.database}"): {self.reason}'
        return text + (f" ({named[self.limit]})" if self.limit else "")


class DatabaseRefused(DatabaseStartupError):
    """PostgreSQL answered and said no: the database does not exist, the
    credentials are wrong, access is not allowed. Retrying would not help."""

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        text = f"{self.reason} at {self.address}"
        if f'"{self.database}"' not in self.reason:
            text += f' (database "{self.database}")'
        return text


class DatabaseUnreachable(DatabaseStartupError, StorageUnavailable):
    """PostgreSQL could not be reached within the time allowed (refused, no
    answer, starting up, out of connections), or stopped answering during start-up."""

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        if self.waited is None:
            return super().describe(names)
        named = {**DEFAULT_LIMIT_NAMES, **(names or {})}
        text = (
            f'cannot connect to PostgreSQL at {self.address} (database "{self.database}"): '
            f"{self.reason}"
        )
        if self.limit:
            text += f" ({named[self.limit]})"
        return text + f"; gave up after {self.waited:.1f} s ({named['startup_timeout']})"

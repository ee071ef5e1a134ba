"""The errors a call can raise: one class per status code the service uses, a few
refined by the ``google.rpc.ErrorInfo`` detail the server attaches (its ``reason``
and ``metadata``), all built in one place, :func:`handle_rpc_error`.

Callers catch these and never grpc's own exceptions::

    try:
        client.append_to_stream("orders-1", [event], expected_last_offset=4)
    except WrongExpectedOffset as exc:
        print("someone else wrote; the stream ends at", exc.actual_last_offset)
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailing metadata key that carries a ``google.rpc.Status`` with details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class EventStreamingError(Exception):
    """Base class of every error this package raises for a call.

    ``code`` is the gRPC status code, ``message`` the server's text, ``reason`` the
    ErrorInfo reason (``"STREAM_NOT_FOUND"``, ...; empty when there is none) and
    ``details`` the ErrorInfo metadata (empty when there is none).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.details: dict[str, str] = dict(details or {})
        #: The metadata of every ErrorInfo sent (several when an append to several
        #: streams failed on more than one).
        self.failures: list[dict[str, str]] = [self.details] if details else []

    @property
    def stream_name(self) -> str:
        """The stream the error is about, when the server named one."""
        return self.details.get("stream_name", "")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class InvalidArgument(EventStreamingError):
    """A field of the request is wrong; ``field`` names it (``events[2].event_type``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field(self) -> str:
        return self.details.get("field", "")


class NotFound(EventStreamingError):
    code = grpc.StatusCode.NOT_FOUND


class StreamNotFound(NotFound):
    """The stream was never written (or was deleted)."""


class MessageNotFound(NotFound):
    """No such message in the queue."""


class ConsumerOffsetNotFound(NotFound):
    """The consumer group never committed an offset on that stream."""


class AlreadyExists(EventStreamingError):
    code = grpc.StatusCode.ALREADY_EXISTS


class DuplicateEvent(AlreadyExists):
    """A batch repeats only some event ids already in the stream."""


class CheckpointAlreadyCommitted(AlreadyExists):
    """An ``append_to_streams`` checkpoint at or below the group's committed offset:
    that input was processed before, and nothing was written. ``committed_offset``
    is the group's offset (None when the server did not say)."""

    @property
    def committed_offset(self) -> int | None:
        return _int_or_none(self.details.get("committed_offset"))


class FailedPrecondition(EventStreamingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WrongStreamType(FailedPrecondition):
    """A log operation on a queue, or a queue operation on a log."""


class StreamTypeChange(FailedPrecondition):
    """A configuration would change the type of a stream that has one."""


class MessageNotHeld(FailedPrecondition):
    """The message is not held by this consumer (its lease ran out and another
    consumer took it, or it was never delivered to this one)."""


class WrongExpectedOffset(EventStreamingError):
    """An ``expected_last_offset`` did not hold: nothing was written.

    ``actual_last_offset`` is the stream's last offset (-1: no events). For a call
    on several streams, ``actual_last_offsets`` maps every stream that failed to its
    last offset.
    """

    code = grpc.StatusCode.ABORTED

    @property
    def actual_last_offset(self) -> int | None:
        """The last offset of the (first) stream whose expectation failed."""
        return _int_or_none(self.details.get("actual_last_offset"))

    @property
    def expected_last_offset(self) -> int | None:
        return _int_or_none(self.details.get("expected_last_offset"))

    @property
    def actual_last_offsets(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for info in self.failures or [self.details]:
            number = _int_or_none(info.get("actual_last_offset"))
            if number is not None and info.get("stream_name"):
                found[info["stream_name"]] = number
        return found


class Aborted(EventStreamingError):
    """ABORTED for another reason than an expected offset."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(EventStreamingError):
    """An offset beyond the newest one (``newest_offset``)."""

    code = grpc.StatusCode.OUT_OF_RANGE

    @property
    def offset(self) -> int | None:
        return _int_or_none(self.details.get("offset"))

    @property
    def newest_offset(self) -> int | None:
        return _int_or_none(self.details.get("newest_offset"))


class Unauthenticated(EventStreamingError):
    """No token, or a wrong one, while the server requires one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(EventStreamingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(EventStreamingError):
    """The request is larger than the server accepts, or a limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(EventStreamingError):
    """The server could not be reached, is shutting down, or lost its storage.
    Calls that are safe to repeat were already retried before this was raised."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(EventStreamingError):
    """The call's deadline passed. A write may or may not have happened."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(EventStreamingError):
    code = grpc.StatusCode.CANCELLED


class ConsumeStreamClosed(Cancelled):
    """An ack, nack or extend sent on a Consume stream that is over (closed by this
    side, or ended by the server)."""


class Unimplemented(EventStreamingError):
    """The server does not offer this RPC (an older server)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(EventStreamingError):
    """The server failed unexpectedly; its log has the details."""

    code = grpc.StatusCode.INTERNAL


class UnknownError(EventStreamingError):
    code = grpc.StatusCode.UNKNOWN


_BY_CODE: dict[grpc.StatusCode, type[EventStreamingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: UnknownError,
}

#: ErrorInfo reasons that name a more precise class than the code alone.
_BY_REASON: dict[str, type[EventStreamingError]] = {
    "STREAM_NOT_FOUND": StreamNotFound,
    "STREAM_DELETED_DURING_CALL": StreamNotFound,
    "MESSAGE_NOT_FOUND": MessageNotFound,
    "CONSUMER_OFFSET_NOT_FOUND": ConsumerOffsetNotFound,
    "DUPLICATE_EVENT": DuplicateEvent,
    "DUPLICATE_MESSAGE": DuplicateEvent,
    "CHECKPOINT_EXISTS": CheckpointAlreadyCommitted,
    "WRONG_STREAM_TYPE": WrongStreamType,
    "STREAM_TYPE_CHANGE": StreamTypeChange,
    "MESSAGE_NOT_HELD": MessageNotHeld,
    "WRONG_EXPECTED_OFFSET": WrongExpectedOffset,
}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _error_infos(metadata: object) -> list[tuple[str, dict[str, str]]]:
    """Every ErrorInfo (reason, metadata) in a call's trailing metadata: one, or one
    per failed stream of an atomic append to several streams."""
    found: list[tuple[str, dict[str, str]]] = []
    if not metadata:
        return found
    for item in metadata:  # type: ignore[attr-defined]
        key, value = item[0], item[1]
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                found.append((info.reason, dict(info.metadata)))
    return found


def handle_rpc_error(exc: grpc.RpcError) -> EventStreamingError:
    """The exception of this package that stands for a failed call: chosen by the
    ErrorInfo reason when the server sent one, else by the status code. Every error
    a client method raises is made here or in :func:`error_from_status`."""
    code = exc.code() if hasattr(exc, "code") else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return _error(code, message or "", _error_infos(trailing))


def error_from_status(status: status_pb2.Status) -> EventStreamingError:
    """The exception for a ``google.rpc.Status`` carried in a message (an
    AppendSession answer), made as :func:`handle_rpc_error` makes a call's."""
    code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append((info.reason, dict(info.metadata)))
    return _error(code, status.message, infos)


_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

#: How a Consume stream's per-message outcomes map to the errors the unary Nack
#: and ExtendVisibility raise.
_FAILURE_KINDS = {
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND", "no message with event_id"),
    "NOT_HELD": (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MESSAGE_NOT_HELD",
        "not held by this consumer (or not by this delivery): message",
    ),
}


def error_from_failure(
    stream_name: str, event_id: str, reason: str, receipt: str = ""
) -> EventStreamingError:
    """The exception for a nack or extend that a Consume stream reports as failed
    (``reason`` ``"NOT_FOUND"`` or ``"NOT_HELD"``): the one the unary call would
    raise (:class:`MessageNotFound`, :class:`MessageNotHeld`)."""
    code, info_reason, text = _FAILURE_KINDS.get(
        reason, (grpc.StatusCode.UNKNOWN, reason, f"failed ({reason}):")
    )
    details = {"stream_name": stream_name, "event_id": event_id}
    if receipt:
        details["receipt"] = receipt
    message = f"stream '{stream_name}': {text} {event_id}"
    return _error(code, message, [(info_reason, details)])


def _error(
    code: grpc.StatusCode, message: str, infos: list[tuple[str, dict[str, str]]]
) -> EventStreamingError:
    reason, details = infos[0] if infos else ("", {})
    kind = _BY_REASON.get(reason)
    if kind is None or kind.code != code:
        kind = _BY_CODE.get(code, EventStreamingError)
        if code is grpc.StatusCode.ABORTED and "actual_last_offset" in details:
            kind = WrongExpectedOffset
        if code is grpc.StatusCode.ALREADY_EXISTS and "committed_offset" in details:
            kind = CheckpointAlreadyCommitted
    error = kind(message, code=code, reason=reason, details=details)
    error.failures = [info for _, info in infos]
    return error

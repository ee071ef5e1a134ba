"""How storage errors and invalid arguments become gRPC statuses: a code, a message
a person can act on, and a ``google.rpc.Status`` with an ``ErrorInfo`` detail (sent
by grpcio-status as ``grpc-status-details-bin``).

Applied to every RPC by :class:`server.calls.CallPath`, so
servicer methods just raise.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.errors import InvalidArgument, ServerShuttingDown
from storage import errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "eventstreaming.v1"
#: Messages are cut to this many characters (trailers have a size limit, and no
#: caller needs more to act).
MAX_MESSAGE_LENGTH = 1000

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidPageToken, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StreamNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.MessageNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ConsumerOffsetNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.WrongStreamType, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StreamTypeChange, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.MessageNotHeld, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.WrongExpectedOffset, grpc.StatusCode.ABORTED),
    (errors.WrongExpectedOffsets, grpc.StatusCode.ABORTED),
    (errors.DuplicateEvent, grpc.StatusCode.ALREADY_EXISTS),
    (errors.CheckpointExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.OffsetOutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ServerShuttingDown, grpc.StatusCode.UNAVAILABLE),
    # An RPC of the proto this build does not serve yet (the generated servicer's
    # default raises NotImplementedError).
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)

INTERNAL_MESSAGE = "internal error; the server log has the details"


def _reason(exc: Exception) -> str:
    name = type(exc).__name__
    return "".join(f"_{c}" if c.isupper() else c.upper() for c in name).lstrip("_")


def _error_info(exc: Exception) -> dict[str, str]:
    if isinstance(exc, errors.WrongExpectedOffset):
        return {
            "stream_name": exc.stream_name,
            "expected_last_offset": str(exc.expected),
            "actual_last_offset": str(exc.actual),
        }
    if isinstance(exc, errors.CheckpointExists):
        return {
            "stream_name": exc.stream_name,
            "consumer_group": exc.consumer_group,
            "committed_offset": str(exc.committed),
        }
    if isinstance(exc, InvalidArgument):
        return {"field": exc.field}
    if isinstance(exc, errors.InvalidPageToken):
        return {"field": "page_token"}
    if isinstance(exc, errors.OffsetOutOfRange):
        return {"offset": str(exc.offset), "newest_offset": str(exc.newest)}
    stream_name = getattr(exc, "stream_name", None)
    return {"stream_name": stream_name} if isinstance(stream_name, str) and stream_name else {}


def status_message(exc: Exception, method: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` ``exc`` stands for. Unknown errors are logged and
    become INTERNAL with a generic message."""
    for kind, mapped in _CODES:
        if isinstance(exc, kind):
            code, message = mapped, str(exc)[:MAX_MESSAGE_LENGTH]
            break
    else:
        log.error("unexpected error in %s", method, exc_info=exc, extra={"method": method})
        return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=INTERNAL_MESSAGE)
    if isinstance(exc, errors.StorageUnavailable):
        log.warning("storage unavailable in %s: %s", method, exc, extra={"method": method})
    # One ErrorInfo per failed expectation of an atomic append to several streams.
    failures = exc.failures if isinstance(exc, errors.WrongExpectedOffsets) else (exc,)
    details = []
    for failure in failures:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=_reason(failure), domain=ERROR_DOMAIN, metadata=_error_info(failure)
            )
        )
        details.append(detail)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def to_status(exc: Exception, method: str) -> grpc.Status:
    """The call status ``exc`` stands for (see :func:`status_message`)."""
    return rpc_status.to_status(status_message(exc, method))

"""Validation of request fields. Every failure names the field and what was wrong."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from storage.records import JSON_CONTENT_TYPE, NewEvent

STREAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
MAX_NAME_LENGTH = 200
MAX_PAGE = 1000
#: The largest google.protobuf.Duration (10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000
DEFAULT_PAGE = 100


class InvalidArgument(Exception):
    """A request field is invalid; ``field`` is its path in the request."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def stream_name(value: str, field: str = "stream_name") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not STREAM_NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{value[:220]!r} is not a valid stream name: use 1-200 characters of "
            "A-Z a-z 0-9 . _ : - starting with a letter or a digit",
        )
    return value


def identifier(value: str, field: str) -> str:
    """A required short name such as a consumer id or consumer group."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most 200 allowed")
    if not value.isprintable():
        raise InvalidArgument(field, "must not contain control characters")
    return value


def event_id(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"{value[:64]!r} is not a UUID") from None


def event_ids(values: Sequence[str], field: str, *, minimum: int, maximum: int) -> list[uuid.UUID]:
    if not minimum <= len(values) <= maximum:
        raise InvalidArgument(
            field, f"has {len(values)} ids; between {minimum} and {maximum} allowed"
        )
    return [event_id(v, f"{field}[{i}]") for i, v in enumerate(values)]


def offset(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, f"is {value}; must be >= 0")
    return value


def page_size(value: int, field: str, *, default: int = DEFAULT_PAGE, cap: int = MAX_PAGE) -> int:
    if value < 0:
        raise InvalidArgument(field, f"is {value}; must be >= 0 (0 means {default})")
    return min(value or default, cap)


def duration(
    value: Duration, field: str, *, maximum: timedelta, allow_zero: bool = True
) -> timedelta:
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    if value.nanos >= 1_000_000_000:
        raise InvalidArgument(field, "nanos must be below 1,000,000,000")
    if value.seconds > MAX_DURATION_SECONDS:
        raise InvalidArgument(
            field, f"seconds {value.seconds} is beyond the range of google.protobuf.Duration"
        )
    result = timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    if not allow_zero and result <= timedelta(0):
        raise InvalidArgument(field, "must be more than 0")
    if result > maximum:
        raise InvalidArgument(field, f"is {result}; at most {maximum} allowed")
    return result


def timestamp(value: Timestamp, field: str) -> datetime:
    """A google.protobuf.Timestamp within its valid range (years 1-9999)."""
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, "nanos must be in 0..999,999,999")
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            field, f"seconds {value.seconds} is outside years 1-9999 (Timestamp's range)"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_json_strings(value: Any) -> None:
    """PostgreSQL's jsonb refuses NUL characters and lone surrogates; so do we,
    on every backend, so a payload accepted in development is accepted in production."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: Iterable[str] = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if "\x00" in text:
                raise ValueError("strings must not contain the NUL character (\\u0000)")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings must not contain unpaired surrogates") from None


def json_payload(data: bytes, field: str) -> None:
    try:
        text = data.decode("utf-8")
        parsed = json.loads(text, parse_constant=_reject_constant)
        # JSON text cannot hold a raw NUL or a lone surrogate (control characters
        # are refused by the parser, and the bytes are valid UTF-8): only a \u
        # escape can produce one, so most payloads skip the walk.
        if "\\u" in text:
            _check_json_strings(parsed)
    except UnicodeDecodeError:
        raise InvalidArgument(
            field, "is not UTF-8 and so not JSON (content_type is application/json)"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(
            field, f"is not valid JSON ({exc}); set content_type for non-JSON payloads"
        ) from None


def _short_text(value: str, field: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most 200 allowed")
    return _no_nul(value, field)


def _no_nul(value: str, field: str) -> str:
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain the NUL character")
    return value


def _metadata(value: Mapping[str, str], field: str) -> dict[str, str]:
    for key, item in value.items():
        _no_nul(key, f"{field} key {key[:64]!r}")
        _no_nul(item, f"{field}[{key[:64]!r}]")
    return dict(value)


def new_events(items: Sequence[Any], field: str = "events") -> list[NewEvent]:
    """Validate a batch of EventData into NewEvent records (ids assigned where empty)."""
    if not items:
        raise InvalidArgument(field, "must hold at least one event")
    seen: set[uuid.UUID] = set()
    result: list[NewEvent] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        eid = event_id(item.event_id, f"{where}.event_id") if item.event_id else uuid.uuid4()
        if eid in seen:
            raise InvalidArgument(f"{where}.event_id", f"{eid} appears twice in the batch")
        seen.add(eid)
        if not item.event_type:
            raise InvalidArgument(f"{where}.event_type", "is required")
        _short_text(item.event_type, f"{where}.event_type")
        content_type = item.content_type or JSON_CONTENT_TYPE
        _short_text(content_type, f"{where}.content_type")
        if content_type == JSON_CONTENT_TYPE:
            json_payload(item.data, f"{where}.data")
        result.append(
            NewEvent(
                event_id=eid,
                event_type=item.event_type,
                data=item.data,
                content_type=content_type,
                metadata=_metadata(item.metadata, f"{where}.metadata"),
                correlation_id=_short_text(item.correlation_id, f"{where}.correlation_id"),
                causation_id=_short_text(item.causation_id, f"{where}.causation_id"),
            )
        )
    return result

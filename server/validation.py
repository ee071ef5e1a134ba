"""Every request rule: field by field, then one function per request that turns it
into the arguments of the storage call. Every failure is InvalidArgument naming the
field's path in the request (``events[2].event_type``) and what was wrong.

A refused request never reaches storage, so it changes nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import InvalidArgument
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from storage.receipts import Receipt
from storage.records import (
    ALL_STREAM,
    DEFAULT_DEDUPLICATION_WINDOW,
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    DEFAULT_RETRY_MULTIPLIER,
    DEFAULT_VISIBILITY_TIMEOUT,
    JSON_CONTENT_TYPE,
    NO_ALL_FILTER,
    NO_FILTER,
    STREAM_NAME_RE,
    AllFilter,
    ConsumerCheckpoint,
    MessageRef,
    NewEvent,
    ReadFilter,
    StreamAppend,
    StreamConfiguration,
    StreamType,
)

# -- limits -----------------------------------------------------------------------
#: Names, types, ids and other short texts.
MAX_NAME_LENGTH = 200
#: Pages: 0 means DEFAULT_PAGE; larger values are cut to MAX_PAGE.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Dequeue: 0 means 1; larger values are cut to MAX_MESSAGES.
MAX_MESSAGES = 100
MAX_VISIBILITY_TIMEOUT = timedelta(hours=12)
MAX_NACK_DELAY = timedelta(hours=12)
#: Longer waits are cut to this (the contract), not refused.
MAX_WAIT_TIME = timedelta(seconds=20)
MAX_ACK_IDS = 1000
MAX_REDRIVE_IDS = 1000
MAX_REASON_LENGTH = 1000
MAX_DELIVERY_ATTEMPTS = 1000
#: Enqueue's delay and deliver_at: at most this far ahead.
MAX_DELIVERY_DELAY = timedelta(days=7)
#: Queue retry delays (StreamConfiguration.retry_*).
MAX_RETRY_DELAY = timedelta(hours=12)
MIN_RETRY_MULTIPLIER = 1.0
MAX_RETRY_MULTIPLIER = 100.0
MAX_DEDUPLICATION_WINDOW = timedelta(days=7)
#: Consume: messages a stream may hold unacknowledged, and per response.
MAX_OUTSTANDING = 1000
MAX_BATCH = 100
MAX_RETENTION_AGE = timedelta(days=36500)
#: Event types a read or subscription may filter on.
MAX_FILTER_TYPES = 1000
#: Stream-name prefixes a read or subscription of the global log may filter on.
MAX_FILTER_PREFIXES = 100
#: Streams one AppendToStreams call may write to.
MAX_APPENDS = 100
#: SubscribeToAll: checkpoint_interval 0 means this.
DEFAULT_CHECKPOINT_INTERVAL = 1000
#: JSON payloads: nesting depth, and PostgreSQL numeric's range (what jsonb stores
#: a number as): at most 131,072 digits before the point and 16,383 after it.
MAX_JSON_DEPTH = 512
MAX_JSON_INTEGER_DIGITS = 131_072
MAX_JSON_FRACTION_DIGITS = 16_383
#: The largest google.protobuf.Duration (10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000

#: A UUID in its canonical text form (any case): 8-4-4-4-12 hex digits.
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NAME_HELP = "use 1-200 characters of A-Z a-z 0-9 . _ : - starting with a letter or a digit"


def _shown(value: str, limit: int = 64) -> str:
    """A value as quoted in a message: repr, cut short (messages stay small)."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


# -- fields -------------------------------------------------------------------------
def stream_name(value: str, field: str = "stream_name") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not STREAM_NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field, f"{_shown(value, 220)} is not a valid stream name: {_NAME_HELP}"
        )
    return value


def stream_prefix(value: str, field: str = "prefix") -> str:
    """A prefix of stream names (empty: all). Every non-empty start of a valid name
    is itself a valid name."""
    if value and not STREAM_NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field, f"{_shown(value, 220)} cannot start a stream name: {_NAME_HELP}"
        )
    return value


def stream_or_all(value: str, field: str = "stream_name") -> str:
    """A stream name, or the reserved name of the global log (consumer groups)."""
    return value if value == ALL_STREAM else stream_name(value, field)


def _text(value: str, field: str, *, limit: int = MAX_NAME_LENGTH) -> str:
    """Free text stored as given: bounded, and without NUL (PostgreSQL refuses it)."""
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {limit} allowed")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain the NUL character")
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
    """A UUID in canonical form; braces, ``urn:uuid:``, missing dashes and non-ASCII
    digits are refused (one id has one spelling)."""
    if not UUID_RE.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{_shown(value)} is not a UUID in canonical form "
            "(8-4-4-4-12 hexadecimal digits, e.g. 3f2504e0-4f89-41d3-9a0c-0305e82c3301)",
        )
    return uuid.UUID(value)


def required_event_id(value: str, field: str = "event_id") -> uuid.UUID:
    if not value:
        raise InvalidArgument(field, "is required")
    return event_id(value, field)


def receipt(value: str, field: str) -> Receipt:
    """A receipt this service issued (QueueMessage.receipt), passed back unchanged."""
    try:
        return Receipt.parse(value)
    except ValueError:
        raise InvalidArgument(
            field,
            "is not a receipt this service issued; pass back QueueMessage.receipt exactly "
            "as received",
        ) from None


def message_ref(event_id_value: str, receipt_value: str, prefix: str = "") -> MessageRef:
    """One message named by ``event_id`` or by ``receipt`` (exactly one of them)."""
    if receipt_value:
        if event_id_value:
            raise InvalidArgument(f"{prefix}receipt", "give either event_id or receipt, not both")
        return receipt(receipt_value, f"{prefix}receipt")
    return required_event_id(event_id_value, f"{prefix}event_id")


def message_refs(
    event_id_values: Sequence[str], receipt_values: Sequence[str], prefix: str = ""
) -> list[MessageRef]:
    """1..MAX_ACK_IDS messages named by ``event_ids`` or by ``receipts``."""
    if receipt_values:
        if event_id_values:
            raise InvalidArgument(
                f"{prefix}receipts", "give either event_ids or receipts, not both"
            )
        if len(receipt_values) > MAX_ACK_IDS:
            raise InvalidArgument(
                f"{prefix}receipts",
                f"has {len(receipt_values)} receipts; between 1 and {MAX_ACK_IDS} allowed",
            )
        return [receipt(v, f"{prefix}receipts[{i}]") for i, v in enumerate(receipt_values)]
    return list(event_ids(event_id_values, f"{prefix}event_ids", minimum=1, maximum=MAX_ACK_IDS))


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


def page_size(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, f"is {value}; must be >= 0 (0 means {DEFAULT_PAGE})")
    return min(value or DEFAULT_PAGE, MAX_PAGE)


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


def _event_types(values: Sequence[str], field: str) -> frozenset[str]:
    if len(values) > MAX_FILTER_TYPES:
        raise InvalidArgument(field, f"has {len(values)} types; at most {MAX_FILTER_TYPES}")
    for i, event_type in enumerate(values):
        if not event_type:
            raise InvalidArgument(f"{field}[{i}]", "must not be empty")
        _text(event_type, f"{field}[{i}]")
    return frozenset(values)


def read_filter(request: pb.ReadStreamRequest | pb.SubscribeToStreamRequest) -> ReadFilter:
    """The replay options of a read or subscription request."""
    _event_types(request.event_types, "event_types")
    if not request.event_types and not request.HasField("from_timestamp"):
        return NO_FILTER
    return ReadFilter(
        from_timestamp=(
            timestamp(request.from_timestamp, "from_timestamp")
            if request.HasField("from_timestamp")
            else None
        ),
        event_types=frozenset(request.event_types),
    )


# -- JSON payloads --------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: PostgreSQL refuses an exponent this large or larger, even on zero.
_MAX_JSON_EXPONENT = 2**30 - 1


def _check_number(literal: str) -> None:
    """A JSON number with a fraction or exponent must fit PostgreSQL's numeric (as
    jsonb stores it), so a payload accepted in development is accepted in
    production."""
    if len(literal) <= 24 and "e" not in literal and "E" not in literal:
        return  # a plain decimal this short is always in range
    number = Decimal(literal)
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if abs(exponent) >= _MAX_JSON_EXPONENT:
        raise ValueError(f"the number {_shown(literal, 24)} has an exponent beyond range")
    if -exponent > MAX_JSON_FRACTION_DIGITS:
        raise ValueError(
            f"the number {_shown(literal, 24)} has more than {MAX_JSON_FRACTION_DIGITS} "
            "digits after the decimal point"
        )
    if any(digits) and number.adjusted() >= MAX_JSON_INTEGER_DIGITS:
        raise ValueError(
            f"the number {_shown(literal, 24)} has more than {MAX_JSON_INTEGER_DIGITS} "
            "digits before the decimal point"
        )


def _check_integer(literal: str) -> int:
    """A JSON integer longer than Python reads by default (4,300 digits): within
    PostgreSQL's numeric range it is as good as any. Its value is not needed."""
    if len(literal.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise ValueError(
            f"an integer has {len(literal.lstrip('-'))} digits; at most "
            f"{MAX_JSON_INTEGER_DIGITS} allowed"
        )
    return 0


def _parse(text: str) -> Any:
    """The JSON document, checked for what PostgreSQL's jsonb refuses."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_check_number)
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
    # Python's int() refused a long integer: read again, checking integers by
    # their length alone (only on this rare path, so plain payloads keep the
    # parser's fast integer reading).
    return json.loads(
        text,
        parse_constant=_reject_constant,
        parse_float=_check_number,
        parse_int=_check_integer,
    )


def _check_document(value: Any) -> None:
    """Nesting at most MAX_JSON_DEPTH deep; strings without NUL characters or lone
    surrogates (PostgreSQL's jsonb refuses both; so do we, on every backend)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            raise ValueError(f"it is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, str):
            strings: Iterable[str] = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
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
        parsed = _parse(text)
        # JSON text cannot hold a raw NUL or a lone surrogate (control characters
        # are refused by the parser, and the bytes are valid UTF-8): only a \u
        # escape can produce one. And nesting deeper than the limit needs more
        # brackets than the limit. Most payloads skip the walk.
        if "\\u" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
            _check_document(parsed)
    except UnicodeDecodeError:
        raise InvalidArgument(
            field, "is not UTF-8 and so not JSON (content_type is application/json)"
        ) from None
    except RecursionError:
        raise InvalidArgument(
            field, f"is not accepted: JSON nested more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(
            field, f"is not valid JSON ({str(exc)[:200]}); set content_type for non-JSON payloads"
        ) from None


# -- events -----------------------------------------------------------------------------
def _metadata(value: Mapping[str, str], field: str) -> dict[str, str]:
    for key, item in value.items():
        if "\x00" in key:
            raise InvalidArgument(
                f"{field} key {_shown(key)}", "must not contain the NUL character"
            )
        if "\x00" in item:
            raise InvalidArgument(f"{field}[{_shown(key)}]", "must not contain the NUL character")
    return dict(value)


def new_events(items: Sequence[pb.EventData], field: str = "events") -> list[NewEvent]:
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
        _text(item.event_type, f"{where}.event_type")
        _text(item.ordering_key, f"{where}.ordering_key")
        content_type = _text(item.content_type, f"{where}.content_type") or JSON_CONTENT_TYPE
        if content_type == JSON_CONTENT_TYPE:
            json_payload(item.data, f"{where}.data")
        result.append(
            NewEvent(
                event_id=eid,
                event_type=item.event_type,
                data=item.data,
                content_type=content_type,
                metadata=_metadata(item.metadata, f"{where}.metadata"),
                correlation_id=_text(item.correlation_id, f"{where}.correlation_id"),
                causation_id=_text(item.causation_id, f"{where}.causation_id"),
                ordering_key=item.ordering_key,
            )
        )
    return result


# -- requests: each returns the storage call's arguments, in its order ------------------
class AppendArgs(NamedTuple):
    stream_name: str
    events: list[NewEvent]
    expected_last_offset: int | None


def _expected_last_offset(
    request: pb.AppendToStreamRequest | pb.StreamAppend, field: str = "expected_last_offset"
) -> int | None:
    if not request.HasField("expected_last_offset"):
        return None
    expected = request.expected_last_offset
    if expected < -1:
        raise InvalidArgument(field, f"is {expected}; use -1 (no events) or an offset >= 0")
    return expected


def append_request(request: pb.AppendToStreamRequest) -> AppendArgs:
    return AppendArgs(
        stream_name(request.stream_name), new_events(request.events), _expected_last_offset(request)
    )


class ReadArgs(NamedTuple):
    stream_name: str
    from_offset: int
    max_count: int
    read_filter: ReadFilter
    backward: bool


def read_request(request: pb.ReadStreamRequest) -> ReadArgs:
    start = request.from_offset
    if request.backward:
        if start < -1:
            raise InvalidArgument(
                "from_offset", f"is {start}; backward, use -1 (the last) or an offset >= 0"
            )
    else:
        offset(start, "from_offset")
    return ReadArgs(
        stream_name(request.stream_name),
        start,
        page_size(request.max_count, "max_count"),
        read_filter(request),
        request.backward,
    )


class ReadAllArgs(NamedTuple):
    from_position: int
    max_count: int
    read_filter: AllFilter
    backward: bool


def read_all_request(request: pb.ReadAllRequest) -> ReadAllArgs:
    return ReadAllArgs(
        offset(request.from_position, "from_position"),
        page_size(request.max_count, "max_count"),
        all_filter(request.filter),
        request.backward,
    )


class AppendStreamsArgs(NamedTuple):
    appends: list[StreamAppend]
    checkpoint: ConsumerCheckpoint | None


def checkpoint(message: pb.ConsumerCheckpoint, field: str = "checkpoint") -> ConsumerCheckpoint:
    return ConsumerCheckpoint(
        stream_or_all(message.stream_name, f"{field}.stream_name"),
        identifier(message.consumer_group, f"{field}.consumer_group"),
        offset(message.offset, f"{field}.offset"),
    )


def append_streams_request(request: pb.AppendToStreamsRequest) -> AppendStreamsArgs:
    has_checkpoint = request.HasField("checkpoint")
    if not request.appends and not has_checkpoint:
        raise InvalidArgument("appends", "at least one append (or a checkpoint) is required")
    if len(request.appends) > MAX_APPENDS:
        raise InvalidArgument(
            "appends", f"has {len(request.appends)} appends; at most {MAX_APPENDS}"
        )
    appends: list[StreamAppend] = []
    seen: set[str] = set()
    for i, item in enumerate(request.appends):
        where = f"appends[{i}]"
        name = stream_name(item.stream_name, f"{where}.stream_name")
        if name in seen:
            raise InvalidArgument(
                f"{where}.stream_name", f"'{name}' is named twice; one append per stream"
            )
        seen.add(name)
        appends.append(
            StreamAppend(
                name,
                new_events(item.events, f"{where}.events"),
                _expected_last_offset(item, f"{where}.expected_last_offset"),
            )
        )
    return AppendStreamsArgs(appends, checkpoint(request.checkpoint) if has_checkpoint else None)


class EnqueueArgs(NamedTuple):
    stream_name: str
    events: list[NewEvent]
    #: Invisible until then (None: visible at once).
    deliver_at: datetime | None


def enqueue_request(request: pb.EnqueueRequest) -> EnqueueArgs:
    name = stream_name(request.stream_name)
    batch = new_events(request.events)
    now = datetime.now(UTC)
    deliver_at: datetime | None = None
    if request.HasField("deliver_at"):
        if request.HasField("delay"):
            raise InvalidArgument("deliver_at", "give either delay or deliver_at, not both")
        deliver_at = timestamp(request.deliver_at, "deliver_at")
        if deliver_at > now + MAX_DELIVERY_DELAY:
            raise InvalidArgument(
                "deliver_at",
                f"is {deliver_at.isoformat()}, more than {MAX_DELIVERY_DELAY.days} days ahead",
            )
    elif request.HasField("delay"):
        delay = duration(request.delay, "delay", maximum=MAX_DELIVERY_DELAY)
        deliver_at = now + delay if delay else None
    return EnqueueArgs(name, batch, deliver_at)


def all_filter(message: pb.AllFilter, field: str = "filter") -> AllFilter:
    """Which events of the global log a request wants."""
    prefixes = message.stream_prefixes
    if len(prefixes) > MAX_FILTER_PREFIXES:
        raise InvalidArgument(
            f"{field}.stream_prefixes",
            f"has {len(prefixes)} prefixes; at most {MAX_FILTER_PREFIXES}",
        )
    for i, prefix in enumerate(prefixes):
        if not prefix:
            raise InvalidArgument(f"{field}.stream_prefixes[{i}]", "must not be empty")
        stream_prefix(prefix, f"{field}.stream_prefixes[{i}]")
    types = _event_types(message.event_types, f"{field}.event_types")
    if not prefixes and not types:
        return NO_ALL_FILTER
    return AllFilter(stream_prefixes=tuple(dict.fromkeys(prefixes)), event_types=types)


def _visibility_timeout(value: Duration, field: str = "visibility_timeout") -> timedelta:
    return duration(value, field, maximum=MAX_VISIBILITY_TIMEOUT, allow_zero=False)


class DequeueArgs(NamedTuple):
    stream_name: str
    consumer_id: str
    visibility_timeout: timedelta | None
    max_messages: int
    wait_time: timedelta


def dequeue_request(request: pb.DequeueRequest) -> DequeueArgs:
    if request.max_messages < 0:
        raise InvalidArgument(
            "max_messages", f"is {request.max_messages}; must be >= 0 (0 means 1)"
        )
    wait = timedelta(0)
    if request.HasField("wait_time"):
        # Longer waits are not an error: the contract cuts them to the cap.
        wait = min(duration(request.wait_time, "wait_time", maximum=timedelta.max), MAX_WAIT_TIME)
    return DequeueArgs(
        stream_name(request.stream_name),
        identifier(request.consumer_id, "consumer_id"),
        _visibility_timeout(request.visibility_timeout)
        if request.HasField("visibility_timeout")
        else None,
        min(request.max_messages or 1, MAX_MESSAGES),
        wait,
    )


class AcknowledgeArgs(NamedTuple):
    stream_name: str
    consumer_id: str
    targets: list[MessageRef]


def acknowledge_request(request: pb.AcknowledgeRequest) -> AcknowledgeArgs:
    return AcknowledgeArgs(
        stream_name(request.stream_name),
        identifier(request.consumer_id, "consumer_id"),
        message_refs(request.event_ids, request.receipts),
    )


class NackArgs(NamedTuple):
    stream_name: str
    consumer_id: str
    target: MessageRef
    #: None: after the stream's retry delay.
    delay: timedelta | None
    reason: str


class NackFields(NamedTuple):
    target: MessageRef
    delay: timedelta | None
    reason: str


def _nack_fields(request: pb.NackRequest | pb.ConsumeNack, prefix: str = "") -> NackFields:
    target = message_ref(request.event_id, request.receipt, prefix)
    delay = None
    if request.HasField("delay"):
        delay = duration(request.delay, f"{prefix}delay", maximum=MAX_NACK_DELAY)
    reason = _text(request.reason, f"{prefix}reason", limit=MAX_REASON_LENGTH)
    return NackFields(target, delay, reason)


def nack_request(request: pb.NackRequest) -> NackArgs:
    name = stream_name(request.stream_name)
    consumer = identifier(request.consumer_id, "consumer_id")
    return NackArgs(name, consumer, *_nack_fields(request))


class ExtendArgs(NamedTuple):
    stream_name: str
    consumer_id: str
    target: MessageRef
    visibility_timeout: timedelta


class ExtendFields(NamedTuple):
    target: MessageRef
    visibility_timeout: timedelta


def _extend_fields(
    request: pb.ExtendVisibilityRequest | pb.ConsumeExtend, prefix: str = ""
) -> ExtendFields:
    target = message_ref(request.event_id, request.receipt, prefix)
    if not request.HasField("visibility_timeout"):
        raise InvalidArgument(f"{prefix}visibility_timeout", "is required")
    return ExtendFields(
        target, _visibility_timeout(request.visibility_timeout, f"{prefix}visibility_timeout")
    )


def extend_request(request: pb.ExtendVisibilityRequest) -> ExtendArgs:
    name = stream_name(request.stream_name)
    consumer = identifier(request.consumer_id, "consumer_id")
    return ExtendArgs(name, consumer, *_extend_fields(request))


class ConsumeArgs(NamedTuple):
    """The start of a Consume stream."""

    stream_name: str
    consumer_id: str
    visibility_timeout: timedelta | None
    max_outstanding: int
    #: Messages per response (1: each alone, as ConsumeResponse.message).
    max_batch: int = 1


def consume_start(request: pb.ConsumeRequest) -> ConsumeArgs:
    """The first request of a Consume stream, which must be ``start``."""
    if request.WhichOneof("kind") != "start":
        raise InvalidArgument("start", "the first request of a Consume stream must be start")
    start = request.start
    if not 1 <= start.max_outstanding <= MAX_OUTSTANDING:
        raise InvalidArgument(
            "start.max_outstanding",
            f"is {start.max_outstanding}; must be between 1 and {MAX_OUTSTANDING}",
        )
    if not 0 <= start.max_batch <= MAX_BATCH:
        raise InvalidArgument(
            "start.max_batch",
            f"is {start.max_batch}; must be between 0 and {MAX_BATCH} (0 or 1: one message "
            "per response)",
        )
    return ConsumeArgs(
        stream_name(start.stream_name, "start.stream_name"),
        identifier(start.consumer_id, "start.consumer_id"),
        _visibility_timeout(start.visibility_timeout, "start.visibility_timeout")
        if start.HasField("visibility_timeout")
        else None,
        start.max_outstanding,
        max(1, start.max_batch),
    )


class ConsumeAckArgs(NamedTuple):
    request_id: int
    targets: list[MessageRef]


class ConsumeNackArgs(NamedTuple):
    request_id: int
    target: MessageRef
    delay: timedelta | None
    reason: str


class ConsumeExtendArgs(NamedTuple):
    request_id: int
    target: MessageRef
    visibility_timeout: timedelta


ConsumeCommand = ConsumeAckArgs | ConsumeNackArgs | ConsumeExtendArgs


def _consume_message(request: object) -> pb.ConsumeRequest:
    """A request of the stream as decoded: one whose bytes did not decode stands
    for its own InvalidArgument (server.calls.Undecodable)."""
    if isinstance(request, pb.ConsumeRequest):
        return request
    error = getattr(request, "error", None)
    if callable(error):
        raise error()
    raise InvalidArgument("request", "is not a ConsumeRequest")


async def consume_requests(
    requests: AsyncIterator[object],
) -> tuple[ConsumeArgs, AsyncIterator[ConsumeCommand]]:
    """A Consume call's start, and its later requests validated one by one as they
    come (a bad one raises InvalidArgument when reached)."""
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgument(
            "start", "the stream ended before its first request (start)"
        ) from None
    start = consume_start(_consume_message(first))

    async def commands() -> AsyncIterator[ConsumeCommand]:
        async for request in requests:
            yield consume_command(_consume_message(request))

    return start, commands()


def consume_command(request: pb.ConsumeRequest) -> ConsumeCommand:
    """A request of a Consume stream after its start: an ack, nack or extend."""
    kind = request.WhichOneof("kind")
    if kind == "ack":
        ack = request.ack
        return ConsumeAckArgs(ack.request_id, message_refs(ack.event_ids, ack.receipts, "ack."))
    if kind == "nack":
        return ConsumeNackArgs(request.nack.request_id, *_nack_fields(request.nack, "nack."))
    if kind == "extend":
        extend = request.extend
        return ConsumeExtendArgs(extend.request_id, *_extend_fields(extend, "extend."))
    if kind == "start":
        raise InvalidArgument("start", "is sent once, as the first request of the stream")
    raise InvalidArgument("kind", "set one of ack, nack or extend")


class PageArgs(NamedTuple):
    """A stream's page: ListDeadLetters."""

    stream_name: str
    max_count: int
    page_token: str


def dead_letters_request(request: pb.ListDeadLettersRequest) -> PageArgs:
    return PageArgs(
        stream_name(request.stream_name),
        page_size(request.max_count, "max_count"),
        request.page_token,
    )


class RedriveArgs(NamedTuple):
    stream_name: str
    event_ids: list[uuid.UUID]


def redrive_request(request: pb.RedriveDeadLettersRequest) -> RedriveArgs:
    return RedriveArgs(
        stream_name(request.stream_name),
        event_ids(request.event_ids, "event_ids", minimum=0, maximum=MAX_REDRIVE_IDS),
    )


class CommitArgs(NamedTuple):
    stream_name: str
    consumer_group: str
    offset: int


def commit_request(request: pb.CommitOffsetRequest) -> CommitArgs:
    return CommitArgs(
        stream_or_all(request.stream_name),
        identifier(request.consumer_group, "consumer_group"),
        offset(request.offset, "offset"),
    )


class GroupArgs(NamedTuple):
    stream_name: str
    consumer_group: str


def consumer_offset_request(request: pb.GetConsumerOffsetRequest) -> GroupArgs:
    return GroupArgs(
        stream_or_all(request.stream_name), identifier(request.consumer_group, "consumer_group")
    )


class SubscribeArgs(NamedTuple):
    stream_name: str
    #: Where to start: an offset, "end" (after the last event), or a consumer group
    #: to resume after.
    from_offset: int | None
    from_end: bool
    consumer_group: str | None
    read_filter: ReadFilter


def subscribe_request(request: pb.SubscribeToStreamRequest) -> SubscribeArgs:
    name = stream_name(request.stream_name)
    replay = read_filter(request)
    start = request.WhichOneof("start")
    if start == "from_offset":
        return SubscribeArgs(name, offset(request.from_offset, "from_offset"), False, None, replay)
    if start == "consumer_group":
        group = identifier(request.consumer_group, "consumer_group")
        return SubscribeArgs(name, None, False, group, replay)
    # from_end=false says nothing about where to start: from the beginning.
    from_end = start == "from_end" and request.from_end
    return SubscribeArgs(name, None if from_end else 0, from_end, None, replay)


class SubscribeAllArgs(NamedTuple):
    #: Where to start: a position, the end, or after a consumer group's position.
    from_position: int | None
    from_end: bool
    consumer_group: str | None
    read_filter: AllFilter
    checkpoint_interval: int


def subscribe_all_request(request: pb.SubscribeToAllRequest) -> SubscribeAllArgs:
    replay = all_filter(request.filter)
    interval = request.checkpoint_interval
    if interval < 0:
        raise InvalidArgument(
            "checkpoint_interval",
            f"is {interval}; must be >= 0 (0 means {DEFAULT_CHECKPOINT_INTERVAL})",
        )
    interval = interval or DEFAULT_CHECKPOINT_INTERVAL
    start = request.WhichOneof("start")
    if start == "from_position":
        position = offset(request.from_position, "from_position")
        return SubscribeAllArgs(position, False, None, replay, interval)
    if start == "consumer_group":
        group = identifier(request.consumer_group, "consumer_group")
        return SubscribeAllArgs(None, False, group, replay, interval)
    if start == "from_end" and request.from_end:
        return SubscribeAllArgs(None, True, None, replay, interval)
    return SubscribeAllArgs(1, False, None, replay, interval)


class ConfigureArgs(NamedTuple):
    stream_name: str
    configuration: StreamConfiguration


def stream_configuration(
    message: pb.StreamConfiguration, field: str = "configuration"
) -> StreamConfiguration:
    """A StreamConfiguration; zero values become the defaults."""
    if message.stream_type == pb.STREAM_TYPE_UNSPECIFIED:
        stream_type: StreamType | None = None
    elif message.stream_type in (pb.STREAM_TYPE_PERSISTENT, pb.STREAM_TYPE_EPHEMERAL):
        stream_type = StreamType(message.stream_type)
    else:
        raise InvalidArgument(
            f"{field}.stream_type",
            f"{message.stream_type} is not a stream type: use STREAM_TYPE_PERSISTENT (1), "
            "STREAM_TYPE_EPHEMERAL (2) or STREAM_TYPE_UNSPECIFIED (0, keep the current type)",
        )
    max_age = None
    if message.HasField("retention_max_age"):
        max_age = (
            duration(
                message.retention_max_age,
                f"{field}.retention_max_age",
                maximum=MAX_RETENTION_AGE,
            )
            or None
        )
    if message.retention_max_count < 0:
        raise InvalidArgument(
            f"{field}.retention_max_count",
            f"is {message.retention_max_count}; must be >= 0 (0 means no count limit)",
        )
    attempts = message.max_delivery_attempts
    if not 0 <= attempts <= MAX_DELIVERY_ATTEMPTS:
        raise InvalidArgument(
            f"{field}.max_delivery_attempts",
            f"is {attempts}; must be between 1 and {MAX_DELIVERY_ATTEMPTS} "
            f"(0 means {DEFAULT_MAX_DELIVERY_ATTEMPTS})",
        )
    visibility = DEFAULT_VISIBILITY_TIMEOUT
    if message.HasField("default_visibility_timeout"):
        visibility = (
            duration(
                message.default_visibility_timeout,
                f"{field}.default_visibility_timeout",
                maximum=MAX_VISIBILITY_TIMEOUT,
            )
            or DEFAULT_VISIBILITY_TIMEOUT
        )
    initial, maximum, multiplier = _retry_policy(message, field)
    window = DEFAULT_DEDUPLICATION_WINDOW
    if message.HasField("deduplication_window"):
        window = duration(
            message.deduplication_window,
            f"{field}.deduplication_window",
            maximum=MAX_DEDUPLICATION_WINDOW,
        )
    return StreamConfiguration(
        stream_type=stream_type,
        retention_max_age=max_age,
        retention_max_count=message.retention_max_count or None,
        max_delivery_attempts=attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS,
        default_visibility_timeout=visibility,
        retry_initial_delay=initial,
        retry_max_delay=maximum,
        retry_multiplier=multiplier,
        deduplication_window=window,
    )


def _retry_policy(
    message: pb.StreamConfiguration, field: str
) -> tuple[timedelta, timedelta, float]:
    """retry_initial_delay, retry_max_delay and retry_multiplier (0 means 2)."""
    initial = maximum = timedelta(0)
    if message.HasField("retry_initial_delay"):
        initial = duration(
            message.retry_initial_delay, f"{field}.retry_initial_delay", maximum=MAX_RETRY_DELAY
        )
    if message.HasField("retry_max_delay"):
        maximum = duration(
            message.retry_max_delay, f"{field}.retry_max_delay", maximum=MAX_RETRY_DELAY
        )
    if maximum < initial:
        raise InvalidArgument(
            f"{field}.retry_max_delay",
            f"is {maximum}; must be at least retry_initial_delay ({initial})",
        )
    multiplier = message.retry_multiplier or DEFAULT_RETRY_MULTIPLIER
    # Written so that NaN fails too.
    if not MIN_RETRY_MULTIPLIER <= multiplier <= MAX_RETRY_MULTIPLIER:
        raise InvalidArgument(
            f"{field}.retry_multiplier",
            f"is {multiplier}; must be between {MIN_RETRY_MULTIPLIER:g} and "
            f"{MAX_RETRY_MULTIPLIER:g} (0 means {DEFAULT_RETRY_MULTIPLIER:g})",
        )
    return initial, maximum, multiplier


def configure_request(request: pb.ConfigureStreamRequest) -> ConfigureArgs:
    return ConfigureArgs(
        stream_name(request.stream_name), stream_configuration(request.configuration)
    )


class ListStreamsArgs(NamedTuple):
    prefix: str
    page_size: int
    page_token: str


def list_streams_request(request: pb.ListStreamsRequest) -> ListStreamsArgs:
    return ListStreamsArgs(
        stream_prefix(request.prefix),
        page_size(request.page_size, "page_size"),
        request.page_token,
    )

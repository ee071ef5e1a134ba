"""Fuzzing: thousands of malformed requests to every RPC, on both backends.

A bounded corpus, generated from a fixed seed (``SEED``) so that a failure
reproduces byte for byte, mutates valid requests field by field (stream names,
ids, numbers, durations, timestamps, enums, page tokens, JSON payloads, batch
sizes) and mutates serialized requests byte by byte (bit flips, truncation,
random bytes). Every case is sent as bytes through a generic channel method. A
small model of the contract (:func:`violations`) says which fields of a request
are certainly invalid and which are doubtful, and every answer is checked:

- never INTERNAL or UNKNOWN, nor a code the service does not use for bad input;
  RESOURCE_EXHAUSTED only for requests over the 4 MiB message limit;
- INVALID_ARGUMENT whenever a field is certainly invalid, with details that start
  with the path of an invalid (or doubtful) field: the service's
  ``field.path: problem`` convention, and ``request: ...`` for bytes that are not
  the request message at all; never INVALID_ARGUMENT for a request the model
  finds valid;
- details are short (under 1,000 characters) and name no Python internals;
- a call that writes nothing leaves no stream behind (checked after every such
  call that names a stream of the run), and at the end every stream under the
  run's prefix was written by a successful call, a log holding exactly the events
  that the successful appends reported, and every consumer group the corpus
  committed for holds the offset of its last successful commit or checkpoint;
- an accepted call of the global log answers what the contract allows:
  AppendToStreams one result per append, at consecutive global positions;
  ReadAll a page in global order, within max_count, from_position and the
  filter, with a next_position that goes on; SubscribeToAll no first event
  that the filter or from_position leaves out.

Offending cases are collected and reported once, grouped by the mutation at
fault, so one run lists every defect. A second test compares the backends: a case
is INVALID_ARGUMENT on both or on neither. Explicit regression tests for each
known defect follow the corpus.

Limits this file holds the service to, on both backends:

- JSON payloads nest at most ``JSON_MAX_DEPTH`` (512) arrays and objects.
  PostgreSQL 15's jsonb (default 2 MB max_stack_depth) parses about 14,500
  nested arrays or 13,000 nested objects, so the limit is well inside it;
- JSON numbers fit PostgreSQL's numeric: at most 131,072 digits before the
  decimal point and 16,383 after (``1e131071`` and ``1e-16383`` are the
  extremes, ``1e131072`` and ``1e-16384`` overflow), so that a payload accepted
  in memory is accepted by PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import itertools
import json
import logging
import random
import re
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1.event_streaming_pb2_grpc import EventStreamingStub as Stub
from tests.conftest import RunningServer, server_settings
from tests.support import unique_name

SEED = 20_240_611
#: Cases of each kind; about 4,000 requests per backend in all.
FIELD_CASES = 3_000
BYTE_CASES = 1_000
PREFIX = f"fuzz-{SEED}"
LOG = f"{PREFIX}-log"
QUEUE = f"{PREFIX}-queue"
FRESH_NAMES = 30
#: The reserved name of the global log (consumer groups on $all).
ALL = "$all"
#: Consumer groups of the run, on its logs and on the global log.
RUN_GROUPS = [f"{PREFIX}-g{i}" for i in range(4)]
#: Logs of one event each that the setup writes: more streams under one prefix
#: than PostgreSQL looks up one by one (so a filtered global read scans instead).
WIDE = f"{PREFIX}-w"
WIDE_STREAMS = 240

JSON_MAX_DEPTH = 512
PG_NUMERIC_INTEGER_DIGITS = 131_072
PG_NUMERIC_SCALE = 16_383
#: PostgreSQL refuses exponents at or beyond INT_MAX / 2 whatever the digits.
PG_NUMERIC_EXPONENT = 2**31 // 2 - 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_DETAILS = 1_000
MAX_NAME = 200
#: Limits the contract leaves open (the service may refuse more, or not).
MAX_APPENDS = 100
MAX_FILTER_PREFIXES = 100
MAX_FILTER_TYPES = 1000
MAX_DURATION_SECONDS = 315_576_000_000
#: Lease and nack delays, queue retry delays: at most 12 h.
MAX_LEASE_SECONDS = 43_200
#: Enqueue's delay and deliver_at, a queue's deduplication window: at most 7 days.
MAX_AHEAD_SECONDS = 7 * 86_400
MAX_RECEIPTS = 1000
MIN_TIMESTAMP = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
INT64_MAX = 2**63 - 1
CALL_TIMEOUT = 10.0
#: Dequeue waits no longer than this in the corpus (valid waits block).
MAX_CORPUS_WAIT_NANOS = 50_000_000

SERVICE = pb.DESCRIPTOR.services_by_name["EventStreaming"]
METHOD_PREFIX = f"/{SERVICE.full_name}/"
#: The RPCs with one request per call; AppendSession (a stream of requests) is
#: fuzzed by its own test, with the AppendToStreams cases.
REQUEST_TYPES: dict[str, type[Message]] = {
    method.name: getattr(pb, method.input_type.name)
    for method in SERVICE.methods
    if not method.client_streaming
}
STREAMING = frozenset(method.name for method in SERVICE.methods if method.server_streaming)
WRITES = frozenset({"AppendToStream", "AppendToStreams", "Enqueue", "ConfigureStream"})

#: Codes the service answers bad or unlucky requests with.
EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NUMBER_RE = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
FIELD_PATH_RE = re.compile(
    r"(request|[a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*)(?=$|[:\s\[])"
)
PYTHON_LEAK_RE = re.compile(
    r"<class '|Traceback \(most recent|set_int_max_str_digits|\b[A-Z][A-Za-z]*(?:Error|Exception)\b"
)

VALID, DOUBTFUL, INVALID = 0, 1, 2


# --------------------------------------------------------------------------- model


@dataclass
class Verdict:
    """What the contract says of a request: fields certainly invalid, and fields
    whose validity it leaves open (the service may refuse them or not)."""

    invalid: set[str] = field(default_factory=set)
    doubtful: set[str] = field(default_factory=set)

    def check(self, path: str, level: int) -> None:
        if level == INVALID:
            self.invalid.add(path)
        elif level == DOUBTFUL:
            self.doubtful.add(path)


def name_level(value: str) -> int:
    return VALID if NAME_RE.fullmatch(value) else INVALID


def identifier_level(value: str) -> int:
    """Consumer ids and groups: 1-200 characters, no control characters."""
    if not value or len(value) > MAX_NAME:
        return INVALID
    if any(unicodedata.category(c) == "Cc" for c in value):
        return INVALID
    return VALID if value.isprintable() else DOUBTFUL


def text_level(value: str, *, required: bool, maximum: int = MAX_NAME) -> int:
    if (required and not value) or len(value) > maximum or "\x00" in value:
        return INVALID
    return VALID


def uuid_level(value: str, *, required: bool) -> int:
    """Event ids: the canonical 8-4-4-4-12 hex form (either case), nothing else."""
    if not value:
        return INVALID if required else VALID
    return VALID if UUID_RE.fullmatch(value) else INVALID


def filter_level(value: str) -> int:
    if not value or "\x00" in value:
        return INVALID
    return DOUBTFUL if len(value) > MAX_NAME else VALID


def duration_level(value: Duration, *, maximum: int | None, positive: bool = False) -> int:
    seconds, nanos = value.seconds, value.nanos
    if seconds < 0 or nanos < 0 or nanos >= 1_000_000_000 or seconds > MAX_DURATION_SECONDS:
        return INVALID
    if positive and seconds == 0 and nanos == 0:
        return INVALID
    # The service keeps microseconds: a few nanoseconds may round either way.
    if positive and seconds == 0 and nanos < 1000:
        return DOUBTFUL
    if maximum is not None and (seconds, nanos) > (maximum, 0):
        return DOUBTFUL if seconds == maximum and nanos < 1000 else INVALID
    return VALID


def timestamp_level(value: Timestamp) -> int:
    if not 0 <= value.nanos < 1_000_000_000:
        return INVALID
    return VALID if MIN_TIMESTAMP <= value.seconds <= MAX_TIMESTAMP else INVALID


def fits_pg_numeric(literal: str) -> bool:
    """Whether PostgreSQL's numeric (and so jsonb) takes this JSON number."""
    match = NUMBER_RE.fullmatch(literal)
    if match is None:
        return True
    whole, fraction, exponent_text = match.group(1), match.group(2) or "", match.group(3)
    if exponent_text and len(exponent_text.lstrip("+-").lstrip("0")) > 10:
        return False
    exponent = int(exponent_text or 0)
    if abs(exponent) >= PG_NUMERIC_EXPONENT:
        return False
    if max(0, len(fraction) - exponent) > PG_NUMERIC_SCALE:
        return False
    if whole.strip("0"):
        first_digit = len(whole.lstrip("0")) - 1
    elif fraction.strip("0"):
        first_digit = -(len(fraction) - len(fraction.lstrip("0")) + 1)
    else:
        return True  # zero
    return first_digit + exponent < PG_NUMERIC_INTEGER_DIGITS


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: str) -> int:
    brackets = re.findall(r"[\[\]{}]", _STRING_RE.sub("", text))
    steps = (1 if b in "[{" else -1 for b in brackets)
    return max(itertools.accumulate(steps), default=0)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _reject(value: str) -> Any:
    raise ValueError(value)


@functools.lru_cache(maxsize=4096)
def json_level(data: bytes) -> int:
    """A JSON payload: UTF-8, strict JSON, no NUL or lone surrogate in strings,
    nested at most JSON_MAX_DEPTH levels, numbers within PostgreSQL's range."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID
    if text.startswith("\ufeff"):
        return DOUBTFUL  # RFC 8259 lets a parser ignore a byte order mark
    if json_depth(text) > JSON_MAX_DEPTH:
        return INVALID
    out_of_range: list[str] = []
    long_integers: list[str] = []

    def number(literal: str) -> None:
        if not fits_pg_numeric(literal):
            out_of_range.append(literal)

    def integer(literal: str) -> None:
        number(literal)
        if len(literal.lstrip("-")) > 4300:
            long_integers.append(literal)

    try:
        parsed = json.loads(text, parse_constant=_reject, parse_int=integer, parse_float=number)
    except (ValueError, RecursionError):
        return INVALID
    if out_of_range:
        return INVALID
    # Only a \u escape makes a NUL or a lone surrogate in valid UTF-8 JSON.
    stack = [parsed] if "\\u" in text else []
    while stack:
        item = stack.pop()
        strings: Sequence[str] = ()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for value in strings:
            if "\x00" in value or (not value.isascii() and _has_surrogate(value)):
                return INVALID
    # Valid JSON that PostgreSQL stores; Python's int() stops at 4,300 digits.
    return DOUBTFUL if long_integers else VALID


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _token_content(token: str, kind: str) -> tuple[str | None, bool]:
    """What a token says a page starts after, and whether it is strict base64url."""
    padded = token + "=" * (-len(token) % 4)
    strict = True
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        strict = False
        try:
            raw = base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            return None, False
    prefix = f"{kind}:".encode()
    if not raw.startswith(prefix):
        return None, strict
    try:
        return raw[len(prefix) :].decode("utf-8"), strict
    except UnicodeDecodeError:
        return None, strict


def _is_int64_position(text: str) -> bool:
    """ASCII digits only, at most int64's maximum."""
    if not re.fullmatch(r"[0-9]+", text) or len(text.lstrip("0")) > 19:
        return False
    return int(text) <= INT64_MAX


def token_level(token: str, kind: str) -> int:
    """A page token: empty, or one the service could have issued."""
    if not token:
        return VALID
    last, strict = _token_content(token, kind)
    if last is None:
        return INVALID
    if kind == "streams-after":
        level = name_level(last)
    elif not _is_int64_position(last):
        level = INVALID
    else:
        level = DOUBTFUL if len(last) > 1 and last.startswith("0") else VALID
    if level == VALID and not strict:
        return DOUBTFUL
    return level


def receipt_level(value: str) -> int:
    """A receipt the service could have issued: the canonical unpadded base64url
    spelling of 32 bytes (an event id and a delivery id)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return INVALID
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return INVALID
    return VALID if len(raw) == 32 and _b64(raw) == value else INVALID


def deliver_at_level(value: Timestamp) -> int:
    """A Timestamp at most 7 days ahead (one in the past delivers at once)."""
    level = timestamp_level(value)
    if level != VALID:
        return level
    ahead = value.seconds - time.time()
    if abs(ahead - MAX_AHEAD_SECONDS) < 3600:
        return DOUBTFUL
    return INVALID if ahead > MAX_AHEAD_SECONDS else VALID


def multiplier_level(value: float) -> int:
    """A queue's retry multiplier: 0 (the default) or 1 to 100; NaN is not."""
    return VALID if value == 0 or 1 <= value <= 100 else INVALID


def _nanos(value: Duration) -> int:
    return value.seconds * 1_000_000_000 + value.nanos


def _retry_policy(verdict: Verdict, config: pb.StreamConfiguration, where: str) -> None:
    """Retry delays of at most 12 h, the longest at least the first (either absent: 0)."""
    levels = {}
    for name in ("retry_initial_delay", "retry_max_delay"):
        levels[name] = VALID
        if config.HasField(name):
            levels[name] = duration_level(getattr(config, name), maximum=MAX_LEASE_SECONDS)
            verdict.check(f"{where}.{name}", levels[name])
    if INVALID not in levels.values():
        initial, longest = _nanos(config.retry_initial_delay), _nanos(config.retry_max_delay)
        if longest < initial:
            # The service keeps microseconds: within one, either answer is right.
            close = initial // 1000 == longest // 1000 or DOUBTFUL in levels.values()
            verdict.check(f"{where}.retry_max_delay", DOUBTFUL if close else INVALID)
    verdict.check(f"{where}.retry_multiplier", multiplier_level(config.retry_multiplier))


def _message_refs(verdict: Verdict, request: Any) -> None:
    """Acknowledge: 1..1000 event ids, or 1..1000 receipts instead (not both)."""
    if not request.receipts:
        _event_ids(verdict, request.event_ids, minimum=1)
        return
    if request.event_ids or len(request.receipts) > MAX_RECEIPTS:
        verdict.check("receipts", INVALID)
    for i, value in enumerate(request.receipts):
        verdict.check(f"receipts[{i}]", receipt_level(value))


def _message_ref(verdict: Verdict, request: Any) -> None:
    """Nack, ExtendVisibility: an event id, or a receipt instead (not both)."""
    if not request.receipt:
        verdict.check("event_id", uuid_level(request.event_id, required=True))
    elif request.event_id:
        verdict.check("receipt", INVALID)
    else:
        verdict.check("receipt", receipt_level(request.receipt))


def _delivery_time(verdict: Verdict, request: pb.EnqueueRequest) -> None:
    """Enqueue: a delay or a time to deliver at, not both."""
    if request.HasField("deliver_at"):
        level = INVALID if request.HasField("delay") else deliver_at_level(request.deliver_at)
        verdict.check("deliver_at", level)
    elif request.HasField("delay"):
        verdict.check("delay", duration_level(request.delay, maximum=MAX_AHEAD_SECONDS))


def _events(verdict: Verdict, events: Sequence[pb.EventData], field: str = "events") -> None:
    if not events:
        verdict.check(field, INVALID)
    seen: set[str] = set()
    for i, item in enumerate(events):
        where = f"{field}[{i}]"
        level = uuid_level(item.event_id, required=False)
        if level == VALID and item.event_id:
            if item.event_id.lower() in seen:
                level = INVALID
            seen.add(item.event_id.lower())
        verdict.check(f"{where}.event_id", level)
        verdict.check(f"{where}.event_type", text_level(item.event_type, required=True))
        verdict.check(f"{where}.content_type", text_level(item.content_type, required=False))
        if item.content_type in ("", "application/json"):
            verdict.check(f"{where}.data", json_level(item.data))
        if any("\x00" in k or "\x00" in v for k, v in item.metadata.items()):
            verdict.check(f"{where}.metadata", INVALID)
        for name in ("correlation_id", "causation_id", "ordering_key"):
            verdict.check(f"{where}.{name}", text_level(getattr(item, name), required=False))


def _event_ids(verdict: Verdict, ids: Sequence[str], *, minimum: int) -> None:
    if not minimum <= len(ids) <= 1000:
        verdict.check("event_ids", INVALID)
    for i, value in enumerate(ids):
        verdict.check(f"event_ids[{i}]", uuid_level(value, required=True))


def _filters(verdict: Verdict, request: Any) -> None:
    if len(request.event_types) > MAX_FILTER_TYPES:
        verdict.check("event_types", DOUBTFUL)
    for i, value in enumerate(request.event_types):
        verdict.check(f"event_types[{i}]", filter_level(value))
    if request.HasField("from_timestamp"):
        verdict.check("from_timestamp", timestamp_level(request.from_timestamp))


def _not_negative(verdict: Verdict, path: str, value: int) -> None:
    verdict.check(path, INVALID if value < 0 else VALID)


def _expected(verdict: Verdict, request: Any, field: str = "expected_last_offset") -> None:
    """-1 (no events) or an offset; absent: any."""
    if request.HasField("expected_last_offset"):
        verdict.check(field, INVALID if request.expected_last_offset < -1 else VALID)


def group_stream_level(value: str) -> int:
    """Where a consumer group commits: a stream, or the global log."""
    return VALID if value == ALL else name_level(value)


def _all_filter(verdict: Verdict, message: pb.AllFilter, field: str = "filter") -> None:
    """Prefixes that can start a stream name (an empty one, the start of every name,
    is left open), and event types as in the other filters."""
    if len(message.stream_prefixes) > MAX_FILTER_PREFIXES:
        verdict.check(f"{field}.stream_prefixes", DOUBTFUL)
    for i, prefix in enumerate(message.stream_prefixes):
        level = name_level(prefix) if prefix else DOUBTFUL
        verdict.check(f"{field}.stream_prefixes[{i}]", level)
    if len(message.event_types) > MAX_FILTER_TYPES:
        verdict.check(f"{field}.event_types", DOUBTFUL)
    for i, value in enumerate(message.event_types):
        verdict.check(f"{field}.event_types[{i}]", filter_level(value))


def _several_appends(verdict: Verdict, request: pb.AppendToStreamsRequest) -> None:
    """Each append as an AppendToStream, to a stream no other append names; at least
    one append or a checkpoint."""
    check = verdict.check
    if not request.appends and not request.HasField("checkpoint"):
        check("appends", INVALID)
    if len(request.appends) > MAX_APPENDS:
        check("appends", DOUBTFUL)
    seen: set[str] = set()
    for i, item in enumerate(request.appends):
        where = f"appends[{i}]"
        level = name_level(item.stream_name)
        if level == VALID:
            if item.stream_name in seen:
                level = INVALID  # named twice
            seen.add(item.stream_name)
        check(f"{where}.stream_name", level)
        _events(verdict, item.events, f"{where}.events")
        _expected(verdict, item, f"{where}.expected_last_offset")
    if request.HasField("checkpoint"):
        checkpoint = request.checkpoint
        check("checkpoint.stream_name", group_stream_level(checkpoint.stream_name))
        check("checkpoint.consumer_group", identifier_level(checkpoint.consumer_group))
        _not_negative(verdict, "checkpoint.offset", checkpoint.offset)


def violations(rpc: str, request: Any) -> Verdict:
    """The contract's view of a request (see the proto's comments)."""
    verdict = Verdict()
    check = verdict.check
    if rpc == "ListStreams":
        check("prefix", VALID if not request.prefix else name_level(request.prefix))
        _not_negative(verdict, "page_size", request.page_size)
        check("page_token", token_level(request.page_token, "streams-after"))
        return verdict
    if rpc in ("CommitOffset", "GetConsumerOffset"):
        check("stream_name", group_stream_level(request.stream_name))
    elif "stream_name" in REQUEST_TYPES[rpc].DESCRIPTOR.fields_by_name:
        check("stream_name", name_level(request.stream_name))
    if rpc in ("AppendToStream", "Enqueue"):
        _events(verdict, request.events)
        if rpc == "AppendToStream":
            _expected(verdict, request)
        else:
            _delivery_time(verdict, request)
    elif rpc == "AppendToStreams":
        _several_appends(verdict, request)
    elif rpc == "ReadStream":
        if request.backward:
            # Backward, -1 is the last offset.
            check("from_offset", INVALID if request.from_offset < -1 else VALID)
        else:
            _not_negative(verdict, "from_offset", request.from_offset)
        _not_negative(verdict, "max_count", request.max_count)
        _filters(verdict, request)
    elif rpc == "ReadAll":
        _not_negative(verdict, "from_position", request.from_position)
        _not_negative(verdict, "max_count", request.max_count)
        _all_filter(verdict, request.filter)
    elif rpc in ("Dequeue", "Acknowledge", "Nack", "ExtendVisibility"):
        check("consumer_id", identifier_level(request.consumer_id))
        if rpc == "Dequeue":
            if request.HasField("visibility_timeout"):
                check(
                    "visibility_timeout",
                    duration_level(request.visibility_timeout, maximum=43_200, positive=True),
                )
            _not_negative(verdict, "max_messages", request.max_messages)
            if request.HasField("wait_time"):
                check("wait_time", duration_level(request.wait_time, maximum=None))
        elif rpc == "Acknowledge":
            _message_refs(verdict, request)
        else:
            _message_ref(verdict, request)
        if rpc == "Nack":
            if request.HasField("delay"):
                check("delay", duration_level(request.delay, maximum=43_200))
            check("reason", text_level(request.reason, required=False, maximum=1000))
        if rpc == "ExtendVisibility":
            check(
                "visibility_timeout",
                duration_level(request.visibility_timeout, maximum=43_200, positive=True)
                if request.HasField("visibility_timeout")
                else INVALID,
            )
    elif rpc == "ListDeadLetters":
        _not_negative(verdict, "max_count", request.max_count)
        check("page_token", token_level(request.page_token, "dead-letters-after"))
    elif rpc == "RedriveDeadLetters":
        _event_ids(verdict, request.event_ids, minimum=0)
    elif rpc in ("CommitOffset", "GetConsumerOffset"):
        check("consumer_group", identifier_level(request.consumer_group))
        if rpc == "CommitOffset":
            _not_negative(verdict, "offset", request.offset)
    elif rpc == "SubscribeToStream":
        start = request.WhichOneof("start")
        if start == "from_offset":
            _not_negative(verdict, "from_offset", request.from_offset)
        elif start == "consumer_group":
            check("consumer_group", identifier_level(request.consumer_group))
        _filters(verdict, request)
    elif rpc == "SubscribeToAll":
        start = request.WhichOneof("start")
        if start == "from_position":
            _not_negative(verdict, "from_position", request.from_position)
        elif start == "consumer_group":
            check("consumer_group", identifier_level(request.consumer_group))
        _all_filter(verdict, request.filter)
        _not_negative(verdict, "checkpoint_interval", request.checkpoint_interval)
    elif rpc == "ConfigureStream":
        config = request.configuration
        where = "configuration"
        check(f"{where}.stream_type", VALID if config.stream_type in (0, 1, 2) else INVALID)
        if config.HasField("retention_max_age"):
            check(
                f"{where}.retention_max_age",
                duration_level(config.retention_max_age, maximum=36_500 * 86_400),
            )
        _not_negative(verdict, f"{where}.retention_max_count", config.retention_max_count)
        attempts = config.max_delivery_attempts
        check(f"{where}.max_delivery_attempts", VALID if 0 <= attempts <= 1000 else INVALID)
        if config.HasField("default_visibility_timeout"):
            check(
                f"{where}.default_visibility_timeout",
                duration_level(config.default_visibility_timeout, maximum=MAX_LEASE_SECONDS),
            )
        _retry_policy(verdict, config, where)
        if config.HasField("deduplication_window"):
            check(
                f"{where}.deduplication_window",
                duration_level(config.deduplication_window, maximum=MAX_AHEAD_SECONDS),
            )
    return verdict


# ------------------------------------------------------------------ value pools

Pick = tuple[str, Any]


def _ids(rng: random.Random, count: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@dataclass(frozen=True)
class World:
    """The streams and ids the setup writes, known before any call is made."""

    log_ids: list[str]
    queue_ids: list[str]

    @property
    def dead_ids(self) -> list[str]:
        return self.queue_ids[:2]

    @property
    def held_ids(self) -> list[str]:
        return self.queue_ids[2:6]


def _random_text(rng: random.Random, length: int) -> str:
    chars: list[str] = []
    while len(chars) < length:
        code = rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0x110000)))
        if not 0xD800 <= code <= 0xDFFF:
            chars.append(chr(code))
    return "".join(chars)


WEIRD_TEXT: list[Pick] = [
    ("empty", ""),
    ("space", " "),
    ("tab", "\t"),
    ("crlf", "\r\n"),
    ("nul", "\x00"),
    ("inner-nul", "a\x00b"),
    ("del", "\x7f"),
    ("c1-control", "\x85"),
    ("bidi-override", "\u202e"),
    ("bom", "\ufeff"),
    ("zero-width", "\u200b"),
    ("nbsp", "\u00a0"),
    ("line-separator", "\u2028"),
    ("noncharacter", "\ufffe"),
    ("max-code-point", "\U0010ffff"),
    ("private-use", "\ue000"),
    ("astral", "\U0001d518"),
    ("emoji-sequence", "\U0001f469\u200d\U0001f469\u200d\U0001f467"),
    ("combining", "e\u0301"),
    ("arabic-digits", "\u0661\u0662\u0663"),
    ("rtl", "\u05e9\u05dc\u05d5\u05dd"),
    ("cjk", "\u6f22\u5b57"),
    ("format", "%s%n%x"),
    ("sql", "' OR 1=1 --"),
    ("path", "../../etc/passwd"),
    ("json", '{"a":1}'),
    ("escaped-nul", "\\u0000"),
    ("len200", "x" * 200),
    ("len201", "x" * 201),
    ("astral-len201", "\U0001d518" * 201),
    ("len1000", "y" * 1000),
    ("len1001", "y" * 1001),
    ("len64k", "z" * 65_536),
]


def weird_text(rng: random.Random) -> Pick:
    if rng.random() < 0.2:
        return "random-unicode", _random_text(rng, rng.randint(1, 40))
    return rng.choice(WEIRD_TEXT)


def stream_name_pick(rng: random.Random, current: str) -> Pick:
    long_name = (PREFIX + "-" + "x" * MAX_NAME)[: MAX_NAME + 1]
    options: list[Pick] = [
        ("log", LOG),
        ("queue", QUEUE),
        ("fresh", f"{PREFIX}-n{rng.randrange(FRESH_NAMES)}"),
        ("len200", long_name[:MAX_NAME]),
        ("len201", long_name),
        ("empty", ""),
        ("leading-dot", "." + current),
        ("leading-dash", "-" + current),
        ("space", current + " x"),
        ("slash", current + "/x"),
        ("nul", current + "\x00"),
        ("trailing-newline", current + "\n"),
        ("accent", current + "\u00e9"),
        ("arabic-digits", "\u0661\u0662\u0663"),
        ("fullwidth", "\uff46\uff55\uff5a\uff5a"),
        # The global log's name: a consumer group's stream, never a stream's.
        ("all", ALL),
        ("all-upper", "$ALL"),
        ("all-suffixed", ALL + "-x"),
    ]
    if rng.random() < 0.2:
        label, text = weird_text(rng)
        return f"text:{label}", text
    return rng.choice(options)


def prefix_pick(rng: random.Random) -> Pick:
    """A stream-name prefix of a global-log filter."""
    long_prefix = (PREFIX + "-" + "p" * MAX_NAME)[: MAX_NAME + 1]
    options: list[Pick] = [
        ("run", PREFIX),
        ("log", LOG),
        ("wide", WIDE),
        ("fresh", f"{PREFIX}-n"),
        ("matches-nothing", f"{PREFIX}-zz"),
        ("underscores", PREFIX.replace("-", "_")),
        ("trailing-colon", PREFIX + ":"),
        ("f", "f"),
        ("digit", "9"),
        ("len200", long_prefix[:MAX_NAME]),
        ("len201", long_prefix),
        ("empty", ""),
        ("all", ALL),
        ("dollar", "$"),
        ("leading-dot", "." + PREFIX),
        ("leading-dash", "-"),
        ("percent", PREFIX + "%"),
        ("star", PREFIX + "*"),
        ("backslash", PREFIX + "\\"),
        ("space", PREFIX + " "),
        ("nul", PREFIX + "\x00"),
        ("accent", "\u00e9"),
        ("fullwidth", "\uff46"),
    ]
    if rng.random() < 0.15:
        label, text = weird_text(rng)
        return f"text:{label}", text
    return rng.choice(options)


IDENTIFIERS: list[Pick] = [
    ("c1", "c1"),
    ("c2", "c2"),
    ("empty", ""),
    ("len200", "c" * 200),
    ("len201", "c" * 201),
    ("nul", "c\x00"),
    ("tab", "a\tb"),
    ("newline", "a\nb"),
    ("del", "\x7f"),
    ("line-separator", "a\u2028b"),
    ("nbsp", "a\u00a0b"),
    ("accented-len200", "\u00e9" * 200),
    ("astral", "\U0001d518\U0001f600"),
]


def identifier_pick(rng: random.Random) -> Pick:
    if rng.random() < 0.25:
        label, text = weird_text(rng)
        return f"text:{label}", text
    return rng.choice(IDENTIFIERS)


def short_text_pick(rng: random.Random) -> Pick:
    return rng.choice([*WEIRD_TEXT[:6], ("A", "A"), ("len200", "t" * 200), weird_text(rng)])


def int64_pick(rng: random.Random) -> Pick:
    return rng.choice(
        [
            ("0", 0),
            ("1", 1),
            ("-1", -1),
            ("-2", -2),
            ("int32-max", 2**31 - 1),
            ("int32-max+1", 2**31),
            ("int64-max", INT64_MAX),
            ("int64-min", -(2**63)),
            ("big", 10**12),
            ("random", rng.randint(-(2**63), INT64_MAX)),
        ]
    )


def int32_pick(rng: random.Random) -> Pick:
    return rng.choice(
        [
            ("0", 0),
            ("1", 1),
            ("-1", -1),
            ("100", 100),
            ("101", 101),
            ("1000", 1000),
            ("1001", 1001),
            ("int32-max", 2**31 - 1),
            ("int32-min", -(2**31)),
            ("random", rng.randint(-(2**31), 2**31 - 1)),
        ]
    )


DURATIONS: list[tuple[str, int, int]] = [
    ("zero", 0, 0),
    ("1ns", 0, 1),
    ("999ns", 0, 999),
    ("1us", 0, 1000),
    ("1s", 1, 0),
    ("30s", 30, 0),
    ("12h", 43_200, 0),
    ("12h+1ns", 43_200, 1),
    ("12h+1s", 43_201, 0),
    ("negative", -1, 0),
    ("negative-nanos", 0, -1),
    ("both-negative", -1, -1),
    ("mixed-signs", 1, -1),
    ("nanos-1e9", 0, 1_000_000_000),
    ("nanos-int32-max", 0, 2**31 - 1),
    ("protobuf-max", MAX_DURATION_SECONDS, 0),
    ("beyond-protobuf-max", MAX_DURATION_SECONDS + 1, 0),
    ("int64-max", INT64_MAX, 0),
    ("int64-min", -(2**63), 0),
    ("100-years", 36_500 * 86_400, 0),
    ("100-years+1s", 36_500 * 86_400 + 1, 0),
]
#: Waits that do not block the corpus (any valid wait above is capped at 20 s).
SHORT_WAITS = [d for d in DURATIONS if d[1] < 0 or d[2] < 0 or d[2] >= 10**9 or d[1] == 0]
SHORT_WAITS += [d for d in DURATIONS if d[1] > MAX_DURATION_SECONDS]

TIMESTAMPS: list[tuple[str, int, int]] = [
    ("epoch", 0, 0),
    ("year-1", MIN_TIMESTAMP, 0),
    ("before-year-1", MIN_TIMESTAMP - 1, 0),
    ("year-9999-end", MAX_TIMESTAMP, 999_999_999),
    ("after-year-9999", MAX_TIMESTAMP + 1, 0),
    ("negative-nanos", 0, -1),
    ("nanos-1e9", 0, 1_000_000_000),
    ("int64-max", INT64_MAX, 0),
    ("int64-min", -(2**63), 0),
    ("before-epoch", -1, 0),
    ("far-future", 4_102_444_800, 0),
]


def durations_around(label: str, seconds: int) -> list[tuple[str, int, int]]:
    """A few durations at the edges of a maximum of ``seconds``, and a few wrong."""
    return [
        ("zero", 0, 0),
        ("1us", 0, 1000),
        ("1s", 1, 0),
        (label, seconds, 0),
        (f"{label}+1ns", seconds, 1),
        (f"{label}+1s", seconds + 1, 0),
        ("100-years", 36_500 * 86_400, 0),
        ("negative", -1, 0),
        ("nanos-1e9", 0, 1_000_000_000),
        ("beyond-protobuf-max", MAX_DURATION_SECONDS + 1, 0),
    ]


#: Queue retry delays: up to 12 h.
RETRY_DELAYS = durations_around("12h", MAX_LEASE_SECONDS)
#: Enqueue's delay and a queue's deduplication window: up to 7 days.
AHEAD_DURATIONS = durations_around("7d", MAX_AHEAD_SECONDS)
#: Enqueue's deliver_at: a time past (delivers at once), or too far ahead.
DELIVERY_TIMES = [*TIMESTAMPS, ("year-2000", 946_684_800, 0)]
MULTIPLIERS: list[Pick] = [
    ("0", 0.0),
    ("-0", -0.0),
    ("1", 1.0),
    ("2", 2.0),
    ("100", 100.0),
    ("0.5", 0.5),
    ("just-under-1", 0.999999),
    ("just-over-100", 100.000001),
    ("-1", -1.0),
    ("nan", float("nan")),
    ("inf", float("inf")),
    ("-inf", float("-inf")),
    ("min-subnormal", 5e-324),
    ("double-max", 1.7976931348623157e308),
]

ENUMS: list[int] = [0, 1, 2, 3, -1, 100, 2**31 - 1, -(2**31)]


def uuid_pick(rng: random.Random, world: World) -> Pick:
    good = rng.choice([*world.held_ids, *world.dead_ids, *world.log_ids[:2], *_ids(rng, 2)])
    plain = good.replace("-", "")
    options: list[Pick] = [
        ("known", good),
        ("random", _ids(rng, 1)[0]),
        ("upper", good.upper()),
        ("nil", "00000000-0000-0000-0000-000000000000"),
        ("braces", "{" + good + "}"),
        ("urn", "urn:uuid:" + good),
        ("arabic-zeros", "\u0660" * 32),
        ("arabic-canonical-shape", "-".join("\u0660" * n for n in (8, 4, 4, 4, 12))),
        ("fullwidth-zeros", "\uff10" * 32),
        ("dashless", plain),
        ("misplaced-dashes", f"{plain[:4]}-{plain[4:20]}-{plain[20:]}"),
        ("trailing-space", good + " "),
        ("short", good[:-1]),
        ("long", good + "0"),
        ("not-hex", "g" + good[1:]),
        ("garbage", "not-a-uuid"),
        ("empty", ""),
    ]
    if rng.random() < 0.1:
        label, text = weird_text(rng)
        return f"text:{label}", text
    return rng.choice(options)


def receipt_pick(rng: random.Random, world: World) -> Pick:
    """A receipt: well formed for a held message (of no delivery the run made), or
    one of the ways a receipt can be mangled."""
    held = uuid.UUID(rng.choice(world.held_ids)).bytes
    good = _b64(held + rng.randbytes(16))
    options: list[Pick] = [
        ("held-message", good),
        ("random-bytes", _b64(rng.randbytes(32))),
        ("padded", good + "="),
        ("standard-alphabet", _b64(rng.randbytes(32)).replace("-", "+").replace("_", "/") + "+/"),
        ("short", good[:-1]),
        ("long", good + "A"),
        ("loose-last-bits", good[:-1] + rng.choice("BCDFGH")),
        ("24-bytes", _b64(rng.randbytes(24))),
        ("48-bytes", _b64(rng.randbytes(48))),
        ("event-id", str(uuid.UUID(bytes=held))),
        ("leading-space", " " + good[1:]),
        ("non-ascii", good[:-1] + "\u00e9"),
        ("nul", good[:-1] + "\x00"),
        ("20KB", "A" * 20_000),
    ]
    if rng.random() < 0.1:
        label, text = weird_text(rng)
        return f"text:{label}", text
    if rng.random() < 0.15:
        # The one mangling that base64 decoders let through.
        return "loose-last-bits", good[:-1] + rng.choice("BCDFGH")
    return rng.choice(options)


BASE_JSON = [b'{"n": 1}', b'{"a": [1, 2.5, {"b": null}], "s": "x", "t": true}']
DEPTHS = [2, 64, 511, 512, 513, 600, 999, 1000, 1001, 5000, 20_000, 100_000]
NUMBERS: list[tuple[str, str]] = [
    ("1e1000000", "1e1000000"),
    ("-1e-20000", "-1e-20000"),
    ("1e131071", "1e131071"),
    ("1e131072", "1e131072"),
    ("1e-16383", "1e-16383"),
    ("1e-16384", "1e-16384"),
    ("0e-16384", "0e-16384"),
    ("0e999999999999", "0e999999999999"),
    ("12e131070", "12e131070"),
    ("0.001e131075", "0.001e131075"),
    ("1e400", "1e400"),
    ("-1e400", "-1e400"),
    ("5e-324", "5e-324"),
    ("double-max", "1.7976931348623157e308"),
    ("int-4300-digits", "9" * 4300),
    ("int-4301-digits", "9" * 4301),
    ("int-131072-digits", "9" * 131_072),
    ("int-131073-digits", "9" * 131_073),
    ("int-200000-digits", "9" * 200_000),
    ("float-200000-digits", "1" + "0" * 199_999 + ".0"),
    ("fraction-16383-digits", "0." + "1" * 16_383),
    ("fraction-16384-digits", "0." + "1" * 16_384),
    ("minus-zero", "-0"),
    ("upper-exponent", "1E+2"),
    ("int64-max+1", str(2**63)),
    ("int64-min-1", str(-(2**63) - 1)),
]


def _deep(kind: str, depth: int) -> bytes:
    """``depth`` nested arrays, objects, or both in turn."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    opens = (b"[" if i % 2 == 0 else b'{"a":' for i in range(depth))
    closes = (b"]" if i % 2 == 0 else b"}" for i in reversed(range(depth)))
    return b"".join(opens) + b"1" + b"".join(closes)


def json_pick(rng: random.Random) -> Pick:
    base = rng.choice(BASE_JSON)
    choice = rng.randrange(14)
    if choice >= 12:
        kind = rng.choice(["array", "object", "mixed"])
        depth = rng.choice(DEPTHS)
        return f"json:deep-{kind}({depth})", _deep(kind, depth)
    if choice in (0, 1, 2):
        label, literal = rng.choice(NUMBERS)
        wrapped = rng.random() < 0.5
        data = b'{"n": ' + literal.encode() + b"}" if wrapped else literal.encode()
        return f"json:number({label})", data
    if choice == 3:
        cut = rng.randrange(len(base))
        return f"json:truncated({cut})", base[:cut]
    if choice == 4:
        return "json:random-bytes", rng.randbytes(rng.randint(1, 48))
    if choice == 5:
        size = rng.choice([1_000, 1_000, 100_000, 100_000, 1_000_000])
        return f"json:long-string({size})", b'{"s": "' + b"x" * size + b'"}'
    if choice == 6:
        keys = rng.choice([1_000, 10_000])
        body = ",".join(f'"k{i}": {i}' for i in range(keys))
        return f"json:keys({keys})", ("{" + body + "}").encode()
    return rng.choice(JSON_SAMPLES)


JSON_SAMPLES: list[Pick] = [
    ("json:nul-escape", b'{"s": "a\\u0000b"}'),
    ("json:nul-escape-key", b'{"\\u0000": 1}'),
    ("json:lone-surrogate", b'{"s": "\\ud800"}'),
    ("json:lone-low-surrogate", b'"\\udc00"'),
    ("json:surrogate-pair", b'{"s": "\\ud83d\\ude00"}'),
    ("json:invalid-utf8", b'{"s": "\xff"}'),
    ("json:overlong-utf8", b'{"s": "\xc0\x80"}'),
    ("json:utf8-surrogate", b'{"s": "\xed\xa0\x80"}'),
    ("json:utf16", '{"n": 1}'.encode("utf-16")),
    ("json:bom", b'\xef\xbb\xbf{"n": 1}'),
    ("json:duplicate-keys", b'{"a": 1, "a": 2}'),
    ("json:nan", b'{"n": NaN}'),
    ("json:infinity", b'{"n": Infinity}'),
    ("json:minus-infinity", b"-Infinity"),
    ("json:trailing-garbage", b'{"n": 1} x'),
    ("json:two-documents", b"{}{}"),
    ("json:raw-tab-in-string", b'{"s": "a\tb"}'),
    ("json:raw-nul-in-string", b'{"s": "a\x00b"}'),
    ("json:raw-del-in-string", b'{"s": "a\x7fb"}'),
    ("json:single-quotes", b"{'a': 1}"),
    ("json:comment", b'{"a": 1 /* c */}'),
    ("json:trailing-comma", b'{"a": 1,}'),
    ("json:leading-zero", b'{"n": 01}'),
    ("json:bare-fraction", b'{"n": .5}'),
    ("json:trailing-dot", b'{"n": 1.}'),
    ("json:plus-sign", b'{"n": +1}'),
    ("json:hex", b'{"n": 0x10}'),
    ("json:empty", b""),
    ("json:whitespace-only", b" \n\t"),
    ("json:nbsp-whitespace", b"\xc2\xa0{}"),
    ("json:vertical-tab", b"\x0b{}"),
    ("json:null", b"null"),
    ("json:string", b'"s"'),
    ("json:unclosed-deep", b"[" * 2000),
    ("json:escaped-controls", b'{"s": "\\b\\f\\n\\r\\t\\u001f"}'),
]


def dead_token_pick(rng: random.Random) -> Pick:
    def dead(after: str) -> str:
        return _b64("dead-letters-after:" + after)

    return rng.choice(
        [
            ("zero", dead("0")),
            ("one", dead("1")),
            ("leading-zeros", dead("007")),
            ("int64-max", dead(str(INT64_MAX))),
            ("int64-max+1", dead(str(2**63))),
            ("2^64", dead(str(2**64))),
            ("negative", dead("-1")),
            ("plus", dead("+1")),
            ("space", dead(" 1")),
            ("arabic-digits", dead("\u0661\u0662")),
            ("mixed-arabic-digits", dead("1\u0662")),
            ("superscript", dead("\u00b2")),
            ("fullwidth", dead("\uff11")),
            ("4300-digits", dead("1" * 4300)),
            ("4301-digits", dead("1" * 4301)),
            ("100000-digits", dead("1" * 100_000)),
            ("nul", dead("1\x00")),
            ("empty-position", dead("")),
            ("wrong-kind", _b64("streams-after:" + LOG)),
            ("not-base64", "!!!"),
            ("raw-nul", "abc\x00"),
            ("20KB-garbage", "A" * 20_000),
            ("random-base64", _b64(rng.randbytes(rng.randint(1, 40)))),
            ("text", weird_text(rng)[1]),
        ]
    )


def streams_token_pick(rng: random.Random) -> Pick:
    def streams(after: str) -> str:
        return _b64("streams-after:" + after)

    return rng.choice(
        [
            ("issued", streams(LOG)),
            ("nul", streams(PREFIX + "\x00")),
            ("arabic-digits", streams("\u0661\u0662\u0663")),
            ("space", streams("a b")),
            ("len201", streams("s" * 201)),
            ("empty-name", streams("")),
            ("wrong-kind", _b64("dead-letters-after:1")),
            ("no-kind", _b64(PREFIX)),
            ("padded", streams(LOG) + "=="),
            ("not-base64", "!!!"),
            ("raw-nul", "abc\x00"),
            ("20KB-garbage", "A" * 20_000),
            ("20KB-well-formed", streams("s" * 15_000)),
            ("random-base64", _b64(rng.randbytes(rng.randint(1, 40)))),
            ("text", weird_text(rng)[1]),
        ]
    )


# ------------------------------------------------------------------- mutators

Mutator = Callable[[random.Random, Any, World], str]


def _set_text(attr: str, pick: Callable[[random.Random], Pick]) -> Mutator:
    def mutate(rng: random.Random, request: Any, world: World) -> str:
        label, value = pick(rng)
        setattr(request, attr, value)
        return f"{attr}={label}"

    return mutate


def _stream_name(rng: random.Random, request: Any, world: World) -> str:
    label, value = stream_name_pick(rng, request.stream_name)
    request.stream_name = value
    return f"stream_name={label}"


def _set_int(attr: str, pick: Callable[[random.Random], Pick]) -> Mutator:
    def mutate(rng: random.Random, request: Any, world: World) -> str:
        target, _, name = attr.rpartition(".")
        owner = getattr(request, target) if target else request
        label, value = pick(rng)
        setattr(owner, name, value)
        return f"{attr}={label}"

    return mutate


def _set_duration(attr: str, pool: Sequence[tuple[str, int, int]] = DURATIONS) -> Mutator:
    def mutate(rng: random.Random, request: Any, world: World) -> str:
        target, _, name = attr.rpartition(".")
        owner = getattr(request, target) if target else request
        if rng.random() < 0.1:
            owner.ClearField(name)
            return f"{attr}=absent"
        label, seconds, nanos = rng.choice(pool)
        value = getattr(owner, name)
        value.seconds, value.nanos = seconds, nanos
        return f"{attr}={label}"

    return mutate


def _set_timestamp(rng: random.Random, request: Any, world: World) -> str:
    label, seconds, nanos = rng.choice(TIMESTAMPS)
    request.from_timestamp.seconds, request.from_timestamp.nanos = seconds, nanos
    return f"from_timestamp={label}"


def _event_types(rng: random.Random, request: Any, world: World) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        del request.event_types[:]
        request.event_types.extend(f"T{i}" for i in range(1000))
        return "event_types=1000-types"
    label, value = rng.choice(
        [("A", "A"), ("empty", ""), ("nul", "A\x00"), ("len201", "t" * 201), weird_text(rng)]
    )
    if choice == 1 or not request.event_types:
        request.event_types.append(value)
    else:
        request.event_types[rng.randrange(len(request.event_types))] = value
    return f"event_types[]={label}"


def _uuid(attr: str) -> Mutator:
    def mutate(rng: random.Random, request: Any, world: World) -> str:
        label, value = uuid_pick(rng, world)
        setattr(request, attr, value)
        return f"{attr}=uuid:{label}"

    return mutate


def _id_list(rng: random.Random, request: Any, world: World) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        del request.event_ids[:]
        return "event_ids=none"
    if choice == 1:
        count = rng.choice([1000, 1001])
        del request.event_ids[:]
        request.event_ids.extend(_ids(rng, count))
        return f"event_ids=count({count})"
    label, value = uuid_pick(rng, world)
    if not request.event_ids or choice == 2:
        request.event_ids.append(value)
    else:
        request.event_ids[rng.randrange(len(request.event_ids))] = value
    return f"event_ids[]=uuid:{label}"


def _event_field(rng: random.Random, request: Any, world: World) -> str:
    """Mutate one field of one event of a batch."""
    if not request.events:
        request.events.append(_event(rng))
    i = rng.randrange(len(request.events))
    item = request.events[i]
    choice = rng.randrange(10)
    where = f"events[{i}]"
    if choice <= 2:
        label, data = json_pick(rng)
        item.data = data
        return f"{where}.data={label}"
    if choice == 3:
        label, value = uuid_pick(rng, world)
        item.event_id = value
        return f"{where}.event_id=uuid:{label}"
    if choice == 4:
        label, value = short_text_pick(rng)
        item.event_type = value
        return f"{where}.event_type={label}"
    if choice == 5:
        label, value = rng.choice(
            [
                ("json", "application/json"),
                ("json-upper", "Application/JSON"),
                ("json-charset", "application/json; charset=utf-8"),
                ("octet-stream", "application/octet-stream"),
                short_text_pick(rng),
            ]
        )
        item.content_type = value
        return f"{where}.content_type={label}"
    if choice == 6:
        label, value = weird_text(rng)
        if rng.random() < 0.5:
            item.metadata[value] = "v"
            return f"{where}.metadata.key={label}"
        item.metadata["k"] = value
        return f"{where}.metadata.value={label}"
    if choice == 9:
        label, value = rng.choice(
            [("key", "k1"), ("len200", "o" * 200), ("len201", "o" * 201), weird_text(rng)]
        )
        item.ordering_key = value
        return f"{where}.ordering_key={label}"
    name = rng.choice(["correlation_id", "causation_id"])
    label, value = short_text_pick(rng)
    setattr(item, name, value)
    return f"{where}.{name}={label}"


def _deliver_at(rng: random.Random, request: Any, world: World) -> str:
    if rng.random() < 0.1:
        request.ClearField("deliver_at")
        return "deliver_at=absent"
    label, seconds, nanos = rng.choice(DELIVERY_TIMES)
    request.deliver_at.seconds, request.deliver_at.nanos = seconds, nanos
    return f"deliver_at={label}"


def _receipt(rng: random.Random, request: Any, world: World) -> str:
    """A receipt in place of the event id (or beside it, which is refused)."""
    label, value = receipt_pick(rng, world)
    request.receipt = value
    if rng.random() < 0.8:
        request.event_id = ""
        return f"receipt={label}"
    return f"receipt={label}(beside-event_id)"


def _receipt_list(rng: random.Random, request: Any, world: World) -> str:
    """Receipts in place of event ids: one, many, mangled, or beside event ids."""
    choice = rng.randrange(6)
    if choice == 0:
        count = rng.choice([MAX_RECEIPTS, MAX_RECEIPTS + 1])
        del request.event_ids[:], request.receipts[:]
        request.receipts.extend(_b64(rng.randbytes(32)) for _ in range(count))
        return f"receipts=count({count})"
    label, value = receipt_pick(rng, world)
    if choice == 1:
        request.receipts.append(value)
        return f"receipts[]={label}(beside-event_ids)"
    del request.event_ids[:]
    if not request.receipts or choice == 2:
        request.receipts.append(value)
    else:
        request.receipts[rng.randrange(len(request.receipts))] = value
    return f"receipts[]={label}"


def _multiplier(rng: random.Random, request: Any, world: World) -> str:
    label, value = rng.choice(MULTIPLIERS)
    request.configuration.retry_multiplier = value
    return f"configuration.retry_multiplier={label}"


def _batch(rng: random.Random, request: Any, world: World) -> str:
    choice = rng.randrange(40)
    if choice == 0:
        big = b'{"s": "' + b"x" * (1024 * 1024) + b'"}'
        request.events.extend(_event(rng, data=big, with_id=False) for _ in range(5))
        return "events=over-4MiB"
    if choice == 1:
        big = b'{"s": "' + b"x" * (MAX_MESSAGE_BYTES - 4096) + b'"}'
        del request.events[:]
        request.events.append(_event(rng, data=big, with_id=False))
        return "events=just-under-4MiB"
    if choice < 8:
        count = rng.choice([100, 100, 1000, 1000, 5000])
        request.events.extend(_event(rng, with_id=False) for _ in range(count))
        return f"events=count({count})"
    if choice < 24 and request.events:
        twin = _event(rng)
        twin.event_id = request.events[0].event_id or _ids(rng, 1)[0]
        request.events[0].event_id = twin.event_id
        request.events.append(twin)
        return "events=duplicate-id"
    del request.events[:]
    return "events=none"


def _expected_last_offset(rng: random.Random, request: Any, world: World) -> str:
    if rng.random() < 0.2:
        request.ClearField("expected_last_offset")
        return "expected_last_offset=absent"
    label, value = int64_pick(rng)
    request.expected_last_offset = value
    return f"expected_last_offset={label}"


def _start(position: str) -> Mutator:
    """The start oneof of a subscription: ``position`` (from_offset, from_position),
    from_end or consumer_group, or none."""

    def mutate(rng: random.Random, request: Any, world: World) -> str:
        choice = rng.randrange(5)
        if choice == 0:
            label, value = int64_pick(rng)
            setattr(request, position, value)
            return f"{position}={label}"
        if choice == 1:
            request.from_end = rng.random() < 0.5
            return f"from_end={request.from_end}"
        if choice == 2:
            label, value = identifier_pick(rng)
            request.consumer_group = value
            return f"consumer_group={label}"
        if choice == 3:
            request.consumer_group = rng.choice(["g", *RUN_GROUPS])
            return "consumer_group=known"
        request.ClearField(request.WhichOneof("start") or position)
        return "start=absent"

    return mutate


def _flag(attr: str) -> Mutator:
    def mutate(rng: random.Random, request: Any, world: World) -> str:
        setattr(request, attr, rng.random() < 0.5)
        return f"{attr}={getattr(request, attr)}"

    return mutate


def _filter(rng: random.Random, request: Any, world: World) -> str:
    """One change to a global-log filter: a prefix, a type, their counts, or none."""
    found = request.filter
    choice = rng.randrange(10)
    if choice == 0:
        request.ClearField("filter")
        return "filter=absent"
    if choice == 1:
        count = rng.choice([MAX_FILTER_PREFIXES, MAX_FILTER_PREFIXES + 1, 1000])
        del found.stream_prefixes[:]
        found.stream_prefixes.extend(f"{PREFIX}-p{i}" for i in range(count))
        return f"filter.stream_prefixes=count({count})"
    if choice == 2:
        count = rng.choice([MAX_FILTER_TYPES, MAX_FILTER_TYPES + 1])
        del found.event_types[:]
        found.event_types.extend(f"T{i}" for i in range(count))
        return f"filter.event_types=count({count})"
    if choice <= 6:
        label, value = prefix_pick(rng)
        values: Any = found.stream_prefixes
        path = "filter.stream_prefixes[]"
    else:
        label, value = rng.choice(
            [
                ("A", "A"),
                ("W", "W"),
                ("empty", ""),
                ("nul", "A\x00"),
                ("len200", "t" * 200),
                ("len201", "t" * 201),
                weird_text(rng),
            ]
        )
        values = found.event_types
        path = "filter.event_types[]"
    if choice in (3, 7) or not values:
        values.append(value)
    else:
        values[rng.randrange(len(values))] = value
    return f"{path}={label}"


def _in_append(mutator: Mutator) -> Mutator:
    """A mutator of AppendToStream's fields, applied to one append of several."""

    def mutate(rng: random.Random, request: Any, world: World) -> str:
        if not request.appends:
            request.appends.append(_stream_append(rng, _fresh_name(rng)))
        i = rng.randrange(len(request.appends))
        return f"appends[{i}].{mutator(rng, request.appends[i], world)}"

    return mutate


def _appends(rng: random.Random, request: Any, world: World) -> str:
    """The shape of AppendToStreams' appends: none, many, a stream named twice, an
    event id shared by two streams, one more append."""
    appends = request.appends
    choice = rng.randrange(12)
    if choice == 0:
        del appends[:]
        request.ClearField("checkpoint")
        return "appends=none-and-no-checkpoint"
    if choice == 1:
        del appends[:]
        return "appends=none"
    if choice == 2:
        count = rng.choice([MAX_APPENDS, MAX_APPENDS + 1])
        del appends[:]
        names = (f"{PREFIX}-m{k}" for k in rng.sample(range(1000), count))
        appends.extend(
            pb.StreamAppend(stream_name=name, events=[_event(rng, with_id=False)]) for name in names
        )
        return f"appends=count({count})"
    if not appends:
        appends.append(_stream_append(rng, LOG))
    if choice <= 6:
        twin = _stream_append(rng, rng.choice(appends).stream_name)
        items = list(appends)
        items.insert(rng.randrange(len(items) + 1), twin)
        del appends[:]
        appends.extend(items)
        return "appends=named-twice"
    if choice <= 8:
        if len(appends) < 2:
            appends.append(_stream_append(rng, _fresh_name(rng)))
        first, second = rng.sample(range(len(appends)), 2)
        for i in (first, second):
            if not appends[i].events:
                appends[i].events.append(_event(rng))
        shared = appends[first].events[0].event_id or _ids(rng, 1)[0]
        appends[first].events[0].event_id = shared
        appends[second].events[-1].event_id = shared
        return "appends=event-id-in-two-streams"
    label, name = rng.choice([("log", LOG), ("queue", QUEUE), ("fresh", _fresh_name(rng))])
    appends.append(_stream_append(rng, name))
    return f"appends=one-more({label})"


def _checkpoint(rng: random.Random, request: Any, world: World) -> str:
    """One field of AppendToStreams' checkpoint (set up valid first), or none."""
    choice = rng.randrange(9)
    if choice == 0:
        request.ClearField("checkpoint")
        return "checkpoint=absent"
    if choice == 1:
        request.checkpoint.Clear()
        request.checkpoint.SetInParent()
        return "checkpoint=empty"
    if not request.HasField("checkpoint"):
        request.checkpoint.CopyFrom(_run_checkpoint(rng))
    checkpoint = request.checkpoint
    if choice <= 4:
        label, value = rng.choice(
            [
                ("all", ALL),
                ("log", LOG),
                ("queue", QUEUE),
                ("fresh", _fresh_name(rng)),
                ("all-upper", "$ALL"),
                ("all-trailing-space", ALL + " "),
                ("all-nul", ALL + "\x00"),
                ("dollar", "$"),
                stream_name_pick(rng, checkpoint.stream_name),
            ]
        )
        checkpoint.stream_name = value
        return f"checkpoint.stream_name={label}"
    if choice <= 6:
        label, value = identifier_pick(rng) if choice == 5 else ("run", rng.choice(RUN_GROUPS))
        checkpoint.consumer_group = value
        return f"checkpoint.consumer_group={label}"
    label, offset = int64_pick(rng)
    checkpoint.offset = offset
    return f"checkpoint.offset={label}"


def _stream_type(rng: random.Random, request: Any, world: World) -> str:
    value = rng.choice(ENUMS)
    request.configuration.stream_type = value
    return f"configuration.stream_type={value}"


def _clear_configuration(rng: random.Random, request: Any, world: World) -> str:
    request.ClearField("configuration")
    return "configuration=absent"


MUTATORS: dict[str, list[Mutator]] = {
    "AppendToStream": [_stream_name, _event_field, _event_field, _batch, _expected_last_offset],
    "ReadStream": [
        _stream_name,
        _set_int("from_offset", int64_pick),
        _set_int("max_count", int32_pick),
        _set_timestamp,
        _event_types,
        _flag("backward"),
    ],
    "GetStreamLength": [_stream_name],
    "GetStreamMetadata": [_stream_name],
    "Enqueue": [
        _stream_name,
        _event_field,
        _event_field,
        _batch,
        _set_duration("delay", AHEAD_DURATIONS),
        _deliver_at,
    ],
    "Dequeue": [
        _stream_name,
        _set_text("consumer_id", identifier_pick),
        _set_duration("visibility_timeout"),
        _set_int("max_messages", int32_pick),
        _set_duration("wait_time", SHORT_WAITS),
    ],
    "Acknowledge": [
        _stream_name,
        _set_text("consumer_id", identifier_pick),
        _id_list,
        _receipt_list,
    ],
    "Nack": [
        _stream_name,
        _set_text("consumer_id", identifier_pick),
        _uuid("event_id"),
        _receipt,
        _set_duration("delay"),
        _set_text("reason", lambda rng: rng.choice([*WEIRD_TEXT, weird_text(rng)])),
    ],
    "ExtendVisibility": [
        _stream_name,
        _set_text("consumer_id", identifier_pick),
        _uuid("event_id"),
        _receipt,
        _set_duration("visibility_timeout"),
    ],
    "ListDeadLetters": [
        _stream_name,
        _set_int("max_count", int32_pick),
        _set_text("page_token", dead_token_pick),
    ],
    "RedriveDeadLetters": [_stream_name, _id_list],
    "CommitOffset": [
        _stream_name,
        _set_text("consumer_group", identifier_pick),
        _set_int("offset", int64_pick),
    ],
    "GetConsumerOffset": [_stream_name, _set_text("consumer_group", identifier_pick)],
    "SubscribeToStream": [_stream_name, _start("from_offset"), _set_timestamp, _event_types],
    "ConfigureStream": [
        _stream_name,
        _stream_type,
        _set_duration("configuration.retention_max_age"),
        _set_int("configuration.retention_max_count", int64_pick),
        _set_int("configuration.max_delivery_attempts", int32_pick),
        _set_duration("configuration.default_visibility_timeout"),
        _set_duration("configuration.retry_initial_delay", RETRY_DELAYS),
        _set_duration("configuration.retry_max_delay", RETRY_DELAYS),
        _multiplier,
        _set_duration("configuration.deduplication_window", AHEAD_DURATIONS),
        _clear_configuration,
    ],
    "GetStreamConfiguration": [_stream_name],
    "ListStreams": [
        _set_text(
            "prefix",
            lambda rng: rng.choice(
                [("run", PREFIX), ("f", "f"), ("empty", ""), stream_name_pick(rng, PREFIX)]
            ),
        ),
        _set_int("page_size", int32_pick),
        _set_text("page_token", streams_token_pick),
    ],
    "DeleteStream": [_stream_name],
    "AppendToStreams": [
        _in_append(_stream_name),
        _in_append(_event_field),
        _in_append(_event_field),
        _in_append(_batch),
        _in_append(_expected_last_offset),
        _appends,
        _appends,
        _checkpoint,
        _checkpoint,
    ],
    "ReadAll": [
        _set_int("from_position", int64_pick),
        _set_int("max_count", int32_pick),
        _flag("backward"),
        _filter,
        _filter,
    ],
    "SubscribeToAll": [
        _start("from_position"),
        _start("from_position"),
        _filter,
        _filter,
        _set_int("checkpoint_interval", int32_pick),
    ],
}


# ----------------------------------------------------------------- base requests


def _event(rng: random.Random, *, data: bytes = b'{"n": 1}', with_id: bool = True) -> pb.EventData:
    item = pb.EventData(event_type=rng.choice(["A", "B"]), data=data)
    if with_id and rng.random() < 0.5:
        item.event_id = _ids(rng, 1)[0]
    if rng.random() < 0.3:
        item.metadata["k"] = "v"
    return item


def _fresh_name(rng: random.Random) -> str:
    """A name of the run that the corpus may write first (as a log or a queue)."""
    return f"{PREFIX}-n{rng.randrange(FRESH_NAMES)}"


def _stream_append(rng: random.Random, name: str) -> pb.StreamAppend:
    item = pb.StreamAppend(stream_name=name, events=[_event(rng) for _ in range(rng.randint(1, 2))])
    if rng.random() < 0.15:
        item.expected_last_offset = rng.choice([-1, 0, 5])
    return item


def _run_checkpoint(rng: random.Random) -> pb.ConsumerCheckpoint:
    """A group of the run on the run's log or on the global log (either may be past
    the offset already, or not yet so far: ALREADY_EXISTS, OUT_OF_RANGE)."""
    group = rng.choice(RUN_GROUPS)
    if rng.random() < 0.5:
        return pb.ConsumerCheckpoint(
            stream_name=ALL, consumer_group=group, offset=rng.randint(1, 3000)
        )
    return pb.ConsumerCheckpoint(stream_name=LOG, consumer_group=group, offset=rng.randrange(40))


def _run_filter(rng: random.Random) -> pb.AllFilter:
    """Streams of the run only, so that a read or subscription stays small."""
    prefixes = rng.choice([[PREFIX], [LOG], [WIDE], [LOG, WIDE]])
    types = ["A"] if rng.random() < 0.3 else []
    return pb.AllFilter(stream_prefixes=prefixes, event_types=types)


def base_request(rpc: str, rng: random.Random, world: World) -> Any:
    """A request of ``rpc`` that the contract accepts."""
    held = rng.choice(world.held_ids)
    # Writes to new streams too: a refused one must not create its stream.
    fresh = f"{PREFIX}-n{rng.randrange(FRESH_NAMES)}" if rng.random() < 0.3 else ""
    if rpc == "AppendToStream":
        events = [_event(rng) for _ in range(rng.randint(1, 3))]
        return pb.AppendToStreamRequest(stream_name=fresh or LOG, events=events)
    if rpc == "Enqueue":
        events = [_event(rng) for _ in range(rng.randint(1, 3))]
        return pb.EnqueueRequest(stream_name=fresh or QUEUE, events=events)
    if rpc == "AppendToStreams":
        # The run's logs, sometimes streams the corpus has not written yet.
        names = [
            LOG,
            f"{WIDE}{rng.randrange(WIDE_STREAMS)}",
            f"{WIDE}{rng.randrange(WIDE_STREAMS)}",
        ]
        if rng.random() < 0.3:
            names[rng.randrange(len(names))] = _fresh_name(rng)
        names = list(dict.fromkeys(names))
        rng.shuffle(names)
        appends = [_stream_append(rng, name) for name in names[: rng.randint(2, 3)]]
        request = pb.AppendToStreamsRequest(appends=appends)
        if rng.random() < 0.4:
            request.checkpoint.CopyFrom(_run_checkpoint(rng))
        return request
    if rpc == "ReadStream":
        backward = rng.random() < 0.3
        return pb.ReadStreamRequest(
            stream_name=LOG,
            from_offset=-1 if backward and rng.random() < 0.5 else 0,
            max_count=10,
            event_types=["A"],
            backward=backward,
        )
    if rpc == "ReadAll":
        return pb.ReadAllRequest(
            from_position=rng.choice([0, 1, 100]),
            max_count=10,
            backward=rng.random() < 0.3,
            filter=_run_filter(rng),
        )
    if rpc == "SubscribeToAll":
        request = pb.SubscribeToAllRequest(
            filter=_run_filter(rng), checkpoint_interval=rng.choice([0, 0, 10])
        )
        start = rng.randrange(4)
        if start == 0:
            request.from_position = rng.choice([0, 1, 100])
        elif start == 1:
            request.from_end = True
        elif start == 2:
            request.consumer_group = rng.choice(RUN_GROUPS)
        return request
    if rpc in ("GetStreamLength", "GetStreamMetadata", "GetStreamConfiguration"):
        return REQUEST_TYPES[rpc](stream_name=rng.choice([LOG, QUEUE]))
    if rpc == "Dequeue":
        return pb.DequeueRequest(stream_name=QUEUE, consumer_id="c2", max_messages=1)
    if rpc == "Acknowledge":
        return pb.AcknowledgeRequest(stream_name=QUEUE, consumer_id="c1", event_ids=[held])
    if rpc == "Nack":
        return pb.NackRequest(stream_name=QUEUE, consumer_id="c1", event_id=held, reason="r")
    if rpc == "ExtendVisibility":
        return pb.ExtendVisibilityRequest(
            stream_name=QUEUE,
            consumer_id="c1",
            event_id=held,
            visibility_timeout=Duration(seconds=3600),
        )
    if rpc == "ListDeadLetters":
        return pb.ListDeadLettersRequest(stream_name=QUEUE, max_count=1)
    if rpc == "RedriveDeadLetters":
        return pb.RedriveDeadLettersRequest(stream_name=QUEUE, event_ids=world.dead_ids[:1])
    if rpc == "CommitOffset":
        if rng.random() < 0.3:
            position = rng.randint(1, 200)
            return pb.CommitOffsetRequest(
                stream_name=ALL, consumer_group=rng.choice(RUN_GROUPS), offset=position
            )
        return pb.CommitOffsetRequest(stream_name=LOG, consumer_group="g", offset=1)
    if rpc == "GetConsumerOffset":
        if rng.random() < 0.3:
            return pb.GetConsumerOffsetRequest(
                stream_name=ALL, consumer_group=rng.choice(RUN_GROUPS)
            )
        return pb.GetConsumerOffsetRequest(stream_name=LOG, consumer_group="g")
    if rpc == "SubscribeToStream":
        return pb.SubscribeToStreamRequest(stream_name=LOG, from_offset=0)
    if rpc == "ConfigureStream":
        return pb.ConfigureStreamRequest(
            stream_name=f"{PREFIX}-conf{rng.randrange(10)}",
            configuration=pb.StreamConfiguration(
                stream_type=rng.choice([pb.STREAM_TYPE_PERSISTENT, pb.STREAM_TYPE_EPHEMERAL]),
                max_delivery_attempts=3,
            ),
        )
    if rpc == "ListStreams":
        return pb.ListStreamsRequest(prefix=PREFIX, page_size=10)
    if rpc == "DeleteStream":
        return pb.DeleteStreamRequest(stream_name=f"{PREFIX}-gone{rng.randrange(10)}")
    raise AssertionError(f"no base request for {rpc}")


def setup_requests(world: World) -> list[tuple[str, Message]]:
    """What the run writes before the corpus: a log, WIDE_STREAMS logs of one event
    under WIDE, and a queue with two dead letters, four messages leased to c1 for
    12 h and six visible ones."""
    wide = [
        pb.StreamAppend(stream_name=f"{WIDE}{k}", events=[pb.EventData(event_type="W", data=b"{}")])
        for k in range(WIDE_STREAMS)
    ]
    wide_appends: list[tuple[str, Message]] = [
        ("AppendToStreams", pb.AppendToStreamsRequest(appends=wide[i : i + MAX_APPENDS]))
        for i in range(0, WIDE_STREAMS, MAX_APPENDS)
    ]
    log_events = [
        pb.EventData(event_id=eid, event_type="AB"[i % 2], data=b'{"i": %d}' % i)
        for i, eid in enumerate(world.log_ids)
    ]
    queue_events = [
        pb.EventData(event_id=eid, event_type="Q", data=b"{}") for eid in world.queue_ids
    ]
    nacks: list[tuple[str, Message]] = [
        ("Nack", pb.NackRequest(stream_name=QUEUE, consumer_id="c1", event_id=eid))
        for eid in world.dead_ids
    ]
    return [
        ("AppendToStream", pb.AppendToStreamRequest(stream_name=LOG, events=log_events)),
        *wide_appends,
        (
            "ConfigureStream",
            pb.ConfigureStreamRequest(
                stream_name=QUEUE,
                configuration=pb.StreamConfiguration(
                    stream_type=pb.STREAM_TYPE_EPHEMERAL, max_delivery_attempts=1
                ),
            ),
        ),
        ("Enqueue", pb.EnqueueRequest(stream_name=QUEUE, events=queue_events)),
        (
            "Dequeue",
            pb.DequeueRequest(
                stream_name=QUEUE,
                consumer_id="c1",
                max_messages=2,
                visibility_timeout=Duration(seconds=60),
            ),
        ),
        *nacks,
        (
            "Dequeue",
            pb.DequeueRequest(
                stream_name=QUEUE,
                consumer_id="c1",
                max_messages=4,
                visibility_timeout=Duration(seconds=43_200),
            ),
        ),
    ]


# ------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    rpc: str
    label: str
    payload: bytes
    #: The request as the server will decode it; None when it does not decode.
    request: Any
    verdict: Verdict


def decode(rpc: str, payload: bytes) -> Any:
    try:
        return REQUEST_TYPES[rpc].FromString(payload)
    except DecodeError:
        return None


def named_streams(rpc: str, request: Any) -> list[str]:
    """The streams a request names: to write, read, or commit a group's offset on."""
    if rpc == "AppendToStreams":
        names = [item.stream_name for item in request.appends]
        if request.HasField("checkpoint"):
            names.append(request.checkpoint.stream_name)
        return names
    if "stream_name" in request.DESCRIPTOR.fields_by_name:
        return [request.stream_name]
    return []


def admissible(rpc: str, request: Any) -> bool:
    """Whether the corpus may send this: it writes and deletes only under the run's
    prefix, leaves the setup's streams alone where it could wreck them, and waits
    no longer than a moment."""
    if request is None:
        return True
    for name in named_streams(rpc, request):
        if NAME_RE.fullmatch(name) and not name.startswith(PREFIX):
            return False
        if rpc in ("DeleteStream", "ConfigureStream") and name in (LOG, QUEUE):
            return False
    if rpc == "Dequeue" and request.HasField("wait_time"):
        wait = request.wait_time
        if duration_level(wait, maximum=None) == VALID:
            return bool(wait.seconds * 10**9 + wait.nanos <= MAX_CORPUS_WAIT_NANOS)
    return True


def _field_case(rng: random.Random, rpc: str, world: World) -> Case:
    for _ in range(50):
        request = base_request(rpc, rng, world)
        labels: dict[str, str] = {}
        for _ in range(rng.choice([1, 1, 1, 1, 1, 1, 2, 2, 3])):
            label = rng.choice(MUTATORS[rpc])(rng, request, world)
            path = label.partition("=")[0]
            # A later value of the same field replaces the earlier one.
            labels.pop(path if not path.endswith("[]") else label, None)
            labels[path if not path.endswith("[]") else label] = label
        if admissible(rpc, request):
            payload = request.SerializeToString()
            label = "; ".join(labels.values())
            return Case(rpc, label, payload, request, violations(rpc, request))
    raise AssertionError(f"no admissible {rpc} case")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    choice = rng.randrange(10)
    if choice <= 2 and data:
        flips = rng.randint(1, 8)
        mutated = bytearray(data)
        for _ in range(flips):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        return f"bit-flips({flips})", bytes(mutated)
    if choice == 3 and data:
        cut = rng.randrange(len(data))
        return "truncated", data[:cut]
    if choice == 4:
        return "random-bytes", rng.randbytes(rng.randint(1, 64))
    if choice == 5 and data:
        at = rng.randrange(len(data) + 1)
        return "inserted-bytes", data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
    if choice == 6 and data:
        at = rng.randrange(len(data))
        value = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        return f"byte-{value:02x}", data[:at] + bytes([value]) + data[at + 1 :]
    if choice == 7:
        return "length-beyond-end", data + b"\x0a" + _varint(2**31) + b"x"
    if choice == 8:
        return rng.choice(
            [
                ("unknown-field", data + b"\xf8\x07\x01"),
                ("wrong-wire-type", b"\x0d\x00\x00\x00\x00" + data),
                ("open-group", data + b"\x0b"),
                ("deep-groups", data + b"\xa3\x06" * 200 + b"\xa4\x06" * 200),
                ("overlong-varint-tag", b"\xff" * 10 + b"\x01"),
                ("invalid-utf8-name", b"\x0a\x02\xc3\x28" + data),
            ]
        )
    return "doubled", data + data


def _byte_case(rng: random.Random, rpc: str, world: World) -> Case:
    for _ in range(50):
        request = base_request(rpc, rng, world)
        base = "valid"
        if rng.random() < 0.3:
            base = rng.choice(MUTATORS[rpc])(rng, request, world)
        label, payload = mutate_bytes(rng, request.SerializeToString())
        decoded = decode(rpc, payload)
        if not admissible(rpc, decoded):
            continue
        verdict = Verdict(invalid={"request"}) if decoded is None else violations(rpc, decoded)
        return Case(rpc, f"bytes:{label} of {base}", payload, decoded, verdict)
    raise AssertionError(f"no admissible {rpc} byte case")


@dataclass(frozen=True)
class Corpus:
    world: World
    setup: list[tuple[str, Message]]
    cases: list[Case]


@functools.cache
def corpus() -> Corpus:
    """The same cases, byte for byte, on every run and every backend."""
    rng = random.Random(SEED)
    world = World(log_ids=_ids(rng, 6), queue_ids=_ids(rng, 12))
    rpcs = sorted(REQUEST_TYPES)
    heavy = {
        "AppendToStream": 3,
        "AppendToStreams": 3,
        "Enqueue": 3,
        "ConfigureStream": 3,
        "ReadAll": 2,
        "SubscribeToAll": 2,
        "Acknowledge": 2,
        "Nack": 2,
        "ExtendVisibility": 2,
    }
    weights = [heavy.get(rpc, 1) for rpc in rpcs]
    cases = [_field_case(rng, rng.choices(rpcs, weights)[0], world) for _ in range(FIELD_CASES)] + [
        _byte_case(rng, rng.choice(rpcs), world) for _ in range(BYTE_CASES)
    ]
    return Corpus(world, setup_requests(world), cases)


# -------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    #: The response's bytes (OK only): a unary call's answer, a subscription's
    #: first item.
    response: bytes = b""


async def send(channel: grpc.aio.Channel, rpc: str, payload: bytes) -> Outcome:
    method = METHOD_PREFIX + rpc
    try:
        if rpc in STREAMING:
            # Bad requests fail before the first item; history can be long.
            call = channel.unary_stream(method, None, None)(payload, timeout=CALL_TIMEOUT)
            async for item in call:
                call.cancel()
                return Outcome(grpc.StatusCode.OK, "", item)
            return Outcome(grpc.StatusCode.OK, "the subscription ended without an item")
        response = await channel.unary_unary(method, None, None)(payload, timeout=CALL_TIMEOUT)
        return Outcome(grpc.StatusCode.OK, "", response)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


def named_field(details: str) -> str | None:
    match = FIELD_PATH_RE.match(details)
    return match.group(1) if match else None


def resolves(descriptor: Any, path: str) -> bool:
    """Whether ``path`` (``events[0].data``) names a field of the message."""
    if path == "request":
        return True
    current: Any = descriptor
    for part in path.split("."):
        name, _, index = part.partition("[")
        found = current.fields_by_name.get(name) if current is not None else None
        if found is None or (index and not found.is_repeated):
            return False
        current = found.message_type
    return True


def _related(named: str, path: str) -> bool:
    return named == path or any(
        longer.startswith(shorter + sep)
        for shorter, longer in ((named, path), (path, named))
        for sep in (".", "[")
    )


def _wanted(found: pb.AllFilter, event: pb.Event) -> bool:
    prefixes, types = found.stream_prefixes, found.event_types
    if prefixes and not any(event.stream_name.startswith(p) for p in prefixes):
        return False
    return not types or event.event_type in types


def answer_problem(rpc: str, request: Any, response: bytes) -> str | None:
    """What the contract rules out in an accepted global call's answer: results not
    one per append, or not at consecutive positions; events of the global log out
    of order, beyond the page or the start, or left out by the filter."""
    if rpc == "AppendToStreams":
        results = pb.AppendToStreamsResponse.FromString(response).results
        if len(results) != len(request.appends):
            return f"{len(results)} results for {len(request.appends)} appends"
        position = results[0].first_global_position if results else 0
        for item, result in zip(request.appends, results, strict=True):
            count = len(item.events)
            if (
                result.last_offset - result.first_offset + 1 != count
                or result.first_global_position != position
                or result.last_global_position != position + count - 1
            ):
                return "results are not the appends' events at consecutive positions"
            position += count
        return None
    if rpc == "SubscribeToAll":
        item = pb.SubscribeToAllResponse.FromString(response)
        if item.WhichOneof("content") != "event":
            return None
        event = item.event
        if not _wanted(request.filter, event):
            return "the first event is one the filter leaves out"
        if request.WhichOneof("start") == "from_position" and (
            event.global_position < request.from_position
        ):
            return "the first event is before from_position"
        return None
    if rpc != "ReadAll":
        return None
    page = pb.ReadAllResponse.FromString(response)
    positions = [event.global_position for event in page.events]
    if len(positions) > min(request.max_count or 100, 1000):
        return f"{len(positions)} events for max_count {request.max_count}"
    if any(p < 1 for p in positions) or positions != sorted(
        set(positions), reverse=request.backward
    ):
        return "events not in global order"
    if any(not _wanted(request.filter, event) for event in page.events):
        return "an event the filter leaves out"
    if not positions:
        return None
    if request.backward:
        if 0 < request.from_position < positions[0]:
            return "an event above from_position"
        if page.next_position >= positions[-1]:
            return "next_position does not continue downward"
    else:
        if positions[0] < request.from_position:
            return "an event below from_position"
        if page.next_position <= positions[-1]:
            return "next_position does not continue upward"
    return None


def judge(case: Case, outcome: Outcome) -> str | None:
    """What is wrong with the answer to a case (None: nothing)."""
    code, details = outcome.code, outcome.details
    if len(case.payload) > MAX_MESSAGE_BYTES:
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        return "a request over the 4 MiB limit was not RESOURCE_EXHAUSTED"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return "server fault"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "RESOURCE_EXHAUSTED for a request under the 4 MiB limit"
    if code not in EXPECTED_CODES:
        return f"unexpected code {code.name}"
    if code == grpc.StatusCode.OK and details:
        return details
    if len(details) >= MAX_DETAILS:
        return f"details of {len(details)} characters"
    if PYTHON_LEAK_RE.search(details):
        return "details name Python internals"
    verdict = case.verdict
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        if verdict.invalid:
            return f"not INVALID_ARGUMENT although {', '.join(sorted(verdict.invalid))} is invalid"
        if code == grpc.StatusCode.OK and case.request is not None:
            return answer_problem(case.rpc, case.request, outcome.response)
        return None
    named = named_field(details)
    descriptor = REQUEST_TYPES[case.rpc].DESCRIPTOR
    if named is None or not resolves(descriptor, named):
        return "details do not start with a field path"
    allowed = verdict.invalid | verdict.doubtful
    if not allowed:
        return f"refused {named} although the request is valid"
    if not any(_related(named, path) for path in allowed):
        return f"named {named}, not one of {', '.join(sorted(allowed))}"
    return None


@dataclass(frozen=True)
class Finding:
    rpc: str
    label: str
    code: str
    details: str
    problem: str
    #: What the finding is about, for grouping: the mutation of the field at fault.
    kind: str


def _path_shape(path: str) -> str:
    return re.sub(r"\[\d*\]", "[]", path)


def _shape(text: str) -> str:
    return re.sub(r"\d+", "#", text)


def finding(case: Case, outcome: Outcome, problem: str) -> Finding:
    if case.request is None:
        kind = "bytes that are not the request message"
    else:
        parts = case.label.split("; ")
        invalid = {_path_shape(path) for path in case.verdict.invalid}
        at_fault = [p for p in parts if _path_shape(p.partition("=")[0]) in invalid]
        if at_fault:
            parts = at_fault
        kind = "; ".join(sorted({_path_shape(_shape(p)) for p in parts}))
    return Finding(case.rpc, case.label, outcome.code.name, outcome.details, problem, kind)


@dataclass
class CorpusRun:
    backend: str
    outcomes: list[Outcome]
    findings: list[Finding]
    seconds: float


@contextlib.contextmanager
def quiet_server_logs() -> Iterator[None]:
    """Thousands of expected failures would bury a report in server log lines."""
    loggers = [logging.getLogger(name) for name in ("server", "storage", "grpc")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.asynccontextmanager
async def fuzz_channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel that takes large responses (a page of large events), keeping
    gRPC's default limit on metadata."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        yield channel


def _of_run(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and name.startswith(PREFIX)


class Ledger:
    """The streams that successful calls wrote, how long each log should be, and
    the offsets consumer groups committed (on the run's streams and on $all)."""

    def __init__(self) -> None:
        self.streams: dict[str, int | None] = {}
        #: (stream, group) of every commit sent: the offset successful calls left,
        #: None where none did.
        self.offsets: dict[tuple[str, str], int | None] = {}

    def _appended(self, name: str, last_offset: int) -> None:
        self.streams[name] = max(self.streams.get(name) or 0, last_offset + 1)

    def _commit(self, name: str, group: str, offset: int | None) -> None:
        if (name == ALL or _of_run(name)) and identifier_level(group) == VALID:
            key = (name, group)
            self.offsets[key] = offset if offset is not None else self.offsets.get(key)

    def record(self, rpc: str, request: Any, outcome: Outcome) -> None:
        if request is None:
            return
        ok = outcome.code == grpc.StatusCode.OK
        if rpc == "CommitOffset":
            self._commit(
                request.stream_name, request.consumer_group, request.offset if ok else None
            )
        if rpc == "AppendToStreams":
            self._append_streams(request, outcome)
        if not ok or "stream_name" not in request.DESCRIPTOR.fields_by_name:
            return
        name = request.stream_name
        if rpc == "AppendToStream":
            self._appended(name, pb.AppendToStreamResponse.FromString(outcome.response).last_offset)
        elif rpc in WRITES:
            self.streams.setdefault(name, None)
        elif rpc == "DeleteStream":
            self.streams.pop(name, None)
            for key in self.offsets:
                if key[0] == name:
                    self.offsets[key] = None

    def _append_streams(self, request: pb.AppendToStreamsRequest, outcome: Outcome) -> None:
        """Every append of a successful call, and its checkpoint unless the call was
        a retry of one already in (that writes nothing)."""
        checkpoint = request.checkpoint if request.HasField("checkpoint") else None
        if outcome.code != grpc.StatusCode.OK:
            if checkpoint is not None:
                self._commit(checkpoint.stream_name, checkpoint.consumer_group, None)
            return
        results = pb.AppendToStreamsResponse.FromString(outcome.response).results
        wrote = not request.appends
        for item, result in zip(request.appends, results, strict=False):
            wrote = wrote or result.first_offset >= (self.streams.get(item.stream_name) or 0)
            self._appended(item.stream_name, result.last_offset)
        if checkpoint is not None:
            offset = checkpoint.offset if wrote else None
            self._commit(checkpoint.stream_name, checkpoint.consumer_group, offset)

    def unwritten(self, rpc: str, request: Any) -> list[str]:
        """The run's streams a call named that no successful call has written."""
        if request is None:
            return []
        names = dict.fromkeys(named_streams(rpc, request))
        return [name for name in names if _of_run(name) and name not in self.streams]

    async def traces(self, stub: Stub) -> list[Finding]:
        """Streams under the prefix, and committed offsets, at the end, that no
        successful call explains."""
        found: dict[str, int] = {}
        token = ""
        while True:
            page = await stub.ListStreams(
                pb.ListStreamsRequest(prefix=PREFIX, page_size=1000, page_token=token)
            )
            found.update((s.stream_name, s.length) for s in page.streams)
            token = page.next_page_token
            if not token:
                break
        findings = []
        for name in sorted(set(found) | set(self.streams)):
            if name not in found:
                problem = "a stream that successful calls wrote is gone"
            elif name not in self.streams:
                problem = "a stream exists that no successful call wrote"
            elif (expected := self.streams[name]) is not None and expected != found[name]:
                problem = f"length {found[name]}, but successful appends wrote {expected}"
            else:
                continue
            findings.append(Finding("-", name, "-", "", problem, "streams after the corpus"))
        for (name, group), expected in sorted(self.offsets.items()):
            request = pb.GetConsumerOffsetRequest(stream_name=name, consumer_group=group)
            try:
                found_offset: int | None = (await stub.GetConsumerOffset(request)).offset
            except grpc.aio.AioRpcError as exc:
                # No offset: the group never committed, or the stream is gone or a queue.
                if exc.code() not in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    raise
                found_offset = None
            if found_offset != expected:
                problem = f"offset {found_offset}, but successful calls committed {expected}"
                label = f"{name} {group}"
                findings.append(Finding("-", label, "-", "", problem, "offsets after the corpus"))
        return findings


async def exists(channel: grpc.aio.Channel, name: str) -> bool:
    request = pb.GetStreamMetadataRequest(stream_name=name).SerializeToString()
    outcome = await send(channel, "GetStreamMetadata", request)
    return outcome.code != grpc.StatusCode.NOT_FOUND


async def run_corpus(address: str, backend: str) -> CorpusRun:
    loop = asyncio.get_running_loop()
    started = loop.time()
    work = corpus()
    ledger = Ledger()
    outcomes: list[Outcome] = []
    findings: list[Finding] = []
    async with fuzz_channel(address) as channel:
        with quiet_server_logs():
            for rpc, request in work.setup:
                outcome = await send(channel, rpc, request.SerializeToString())
                assert outcome.code == grpc.StatusCode.OK, f"setup {rpc}: {outcome}"
                ledger.record(rpc, request, outcome)
            for case in work.cases:
                outcome = await send(channel, case.rpc, case.payload)
                outcomes.append(outcome)
                ledger.record(case.rpc, case.request, outcome)
                problem = judge(case, outcome)
                if problem is not None:
                    findings.append(finding(case, outcome, problem))
                # A call that wrote nothing must leave no stream behind.
                for name in ledger.unwritten(case.rpc, case.request):
                    if await exists(channel, name):
                        ledger.streams[name] = None
                        trace = finding(case, outcome, f"{name[len(PREFIX) :]} exists after it")
                        findings.append(
                            replace(trace, kind=f"{case.rpc} {outcome.code.name} leaves a stream")
                        )
            findings.extend(await ledger.traces(Stub(channel)))
    return CorpusRun(backend, outcomes, findings, loop.time() - started)


_RUNS: dict[str, CorpusRun] = {}


async def corpus_run(running: RunningServer) -> CorpusRun:
    """The corpus's outcomes on a backend, sent once per test session."""
    if running.backend not in _RUNS:
        _RUNS[running.backend] = await run_corpus(running.address, running.backend)
    return _RUNS[running.backend]


def report(findings: Sequence[Finding], limit: int = 120) -> str:
    """One line per kind of finding: the RPCs and codes, how many, one example."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for item in findings:
        groups.setdefault((_shape(item.problem), item.kind), []).append(item)
    lines = []
    for (_, kind), items in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0]))[:limit]:
        first = items[0]
        rpcs = ",".join(sorted({i.rpc for i in items}))
        codes = ",".join(sorted({i.code for i in items}))
        details = first.details[:100] + ("..." if len(first.details) > 100 else "")
        lines.append(
            f"- {kind[:80]} [{codes}] x{len(items)} {rpcs}: {first.problem[:100]}"
            + (f"\n    e.g. {first.label[:100]!r} -> {details!r}" if details else "")
        )
    if len(groups) > limit:
        lines.append(f"- ... and {len(groups) - limit} more kinds")
    return "\n".join(lines)


# ------------------------------------------------------------------ the tests


def field_paths(descriptor: Any, prefix: str = "") -> set[str]:
    """Every field of a message, as a path without indices (``appends.events.data``),
    into the service's own messages."""
    paths = set()
    for item in descriptor.fields:
        path = prefix + item.name
        paths.add(path)
        nested = item.message_type
        if (
            nested is not None
            and nested.file is pb.DESCRIPTOR
            and not nested.GetOptions().map_entry
        ):
            paths |= field_paths(nested, path + ".")
    return paths


def mutated_paths(cases: Sequence[Case]) -> dict[str, set[str]]:
    """Per RPC, the fields (and their enclosing fields) the field mutations changed."""
    mutated: dict[str, set[str]] = {}
    for case in cases:
        if case.label.startswith("bytes:"):
            continue
        for part in case.label.split("; "):
            path = re.sub(r"\[[^\]]*\]", "", part.partition("=")[0])
            steps = path.split(".")
            mutated.setdefault(case.rpc, set()).update(
                ".".join(steps[: i + 1]) for i in range(len(steps))
            )
    return mutated


def test_corpus_covers_every_rpc_and_is_deterministic() -> None:
    cases = corpus().cases
    counts = Counter(case.rpc for case in cases)
    assert set(counts) == set(REQUEST_TYPES), "an RPC has no cases"
    assert min(counts.values()) >= 100, counts
    mutated = mutated_paths(cases)
    unmutated = {
        rpc: sorted(field_paths(request_type.DESCRIPTOR) - mutated.get(rpc, set()))
        for rpc, request_type in REQUEST_TYPES.items()
    }
    assert not any(unmutated.values()), {rpc: p for rpc, p in unmutated.items() if p}
    accepted = {c.rpc for c in cases if c.request is not None and not c.verdict.invalid}
    assert accepted == set(REQUEST_TYPES), "an RPC has no case the contract accepts"
    refused = sum(1 for case in cases if case.verdict.invalid)
    assert refused > len(cases) // 2, "most cases should be invalid requests"
    assert sum(1 for case in cases if case.request is None) > 100, "few undecodable cases"
    rng = random.Random(SEED)
    world = World(log_ids=_ids(rng, 6), queue_ids=_ids(rng, 12))
    assert world == corpus().world


async def test_fuzz_corpus_gets_no_server_fault(server: RunningServer) -> None:
    run = await corpus_run(server)
    cases = len(corpus().cases)
    if run.findings:
        pytest.fail(
            f"{len(run.findings)} of {cases} fuzz cases answered wrongly on {run.backend} "
            f"(seed {SEED}, {run.seconds:.1f} s):\n{report(run.findings)}",
            pytrace=False,
        )


async def test_backends_agree_on_what_is_invalid(pg_server: RunningServer) -> None:
    """A request is INVALID_ARGUMENT on both backends or on neither (validation does
    not depend on stream state). Cases that either backend answers wrongly are
    already reported by the corpus test and left out here."""
    postgres = await corpus_run(pg_server)
    memory = _RUNS.get("memory")
    if memory is None:
        app = EventStreamingServer(server_settings("memory"))
        await app.start()
        try:
            memory = _RUNS["memory"] = await run_corpus(f"127.0.0.1:{app.port}", "memory")
        finally:
            await app.stop(grace=1)
    findings = []
    for case, mem, pg in zip(corpus().cases, memory.outcomes, postgres.outcomes, strict=True):
        if judge(case, mem) or judge(case, pg):
            continue
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if (mem.code == invalid) != (pg.code == invalid):
            disagreement = Outcome(mem.code, f"memory {mem.code.name}, postgres {pg.code.name}")
            findings.append(finding(case, disagreement, "memory and PostgreSQL disagree"))
    if findings:
        pytest.fail(
            f"{len(findings)} cases refused as invalid by one backend only (memory/postgres):\n"
            + report(findings),
            pytrace=False,
        )


# ------------------------------------------------------- known defects, one by one


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def assert_names(exc: grpc.aio.AioRpcError, field_path: str) -> None:
    details = exc.details() or ""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), details[:300])
    assert named_field(details) == field_path, details[:300]
    assert len(details) < MAX_DETAILS, f"{len(details)} characters of details"
    assert not PYTHON_LEAK_RE.search(details), details[:300]


async def append_data(stub: Stub, name: str, data: bytes) -> Any:
    request = pb.AppendToStreamRequest(
        stream_name=name, events=[pb.EventData(event_type="T", data=data)]
    )
    return await stub.AppendToStream(request)


async def enqueue_data(stub: Stub, name: str, data: bytes) -> Any:
    request = pb.EnqueueRequest(stream_name=name, events=[pb.EventData(event_type="T", data=data)])
    return await stub.Enqueue(request)


WRITE_DATA = {"append": append_data, "enqueue": enqueue_data}


async def assert_absent(stub: Stub, name: str) -> None:
    exc = await rpc_error(stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name)))
    assert exc.code() == grpc.StatusCode.NOT_FOUND, "a refused write left a stream behind"


@pytest.mark.parametrize("write", sorted(WRITE_DATA))
@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH + 1, 1000, 100_000])
async def test_json_nested_beyond_the_limit_is_invalid(
    stub: Stub, stream_name: str, write: str, kind: str, depth: int
) -> None:
    exc = await rpc_error(WRITE_DATA[write](stub, stream_name, _deep(kind, depth)))
    assert_names(exc, "events[0].data")
    await assert_absent(stub, stream_name)


@pytest.mark.parametrize("write", sorted(WRITE_DATA))
@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
async def test_json_nested_up_to_the_limit_is_accepted(
    stub: Stub, stream_name: str, write: str, kind: str
) -> None:
    await WRITE_DATA[write](stub, stream_name, _deep(kind, JSON_MAX_DEPTH))


OUT_OF_NUMERIC_RANGE = {
    "1e1000000": "1e1000000",
    "-1e-20000": "-1e-20000",
    "1e131072": "1e131072",
    "1e-16384": "1e-16384",
    "0.001e131075": "0.001e131075",
    "0e999999999999": "0e999999999999",
    "int-200000-digits": "9" * 200_000,
    "float-200000-digits": "1" + "0" * 199_999 + ".0",
    "fraction-16384-digits": "0." + "1" * 16_384,
}
IN_NUMERIC_RANGE = {
    "1e131071": "1e131071",
    "-1e-16383": "-1e-16383",
    "12e131070": "12e131070",
    "1e400": "1e400",
    "fraction-16383-digits": "0." + "1" * 16_383,
    "int-4300-digits": "9" * 4300,
}


@pytest.mark.parametrize("write", sorted(WRITE_DATA))
@pytest.mark.parametrize("number", sorted(OUT_OF_NUMERIC_RANGE))
async def test_json_number_beyond_postgres_numeric_is_invalid_on_every_backend(
    stub: Stub, stream_name: str, write: str, number: str
) -> None:
    data = b'{"n": ' + OUT_OF_NUMERIC_RANGE[number].encode() + b"}"
    exc = await rpc_error(WRITE_DATA[write](stub, stream_name, data))
    assert_names(exc, "events[0].data")
    await assert_absent(stub, stream_name)


@pytest.mark.parametrize("write", sorted(WRITE_DATA))
@pytest.mark.parametrize("number", sorted(IN_NUMERIC_RANGE))
async def test_json_number_within_postgres_numeric_is_accepted_on_every_backend(
    stub: Stub, stream_name: str, write: str, number: str
) -> None:
    data = b'{"n": ' + IN_NUMERIC_RANGE[number].encode() + b"}"
    await WRITE_DATA[write](stub, stream_name, data)


@pytest.mark.parametrize("digits", [4301, 131_072])
async def test_long_integer_is_stored_or_refused_without_python_internals(
    server: RunningServer, stream_name: str, digits: int
) -> None:
    """Valid JSON within PostgreSQL's range, beyond Python's int() limit."""
    event = pb.EventData(event_type="T", data=b"9" * digits)
    request = pb.AppendToStreamRequest(stream_name=stream_name, events=[event])
    outcome = await send(server.channel, "AppendToStream", request.SerializeToString())
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert named_field(outcome.details) == "events[0].data", outcome.details
        assert not PYTHON_LEAK_RE.search(outcome.details), outcome.details


async def test_json_numbers_get_the_same_answer_from_both_backends(
    pg_server: RunningServer,
) -> None:
    app = EventStreamingServer(server_settings("memory"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            memory = Stub(channel)
            disagreements = []
            numbers = {**OUT_OF_NUMERIC_RANGE, **IN_NUMERIC_RANGE}
            for label, literal in sorted(numbers.items()):
                data = b'{"n": ' + literal.encode() + b"}"
                codes = []
                for stub in (memory, pg_server.stub):
                    try:
                        await append_data(stub, unique_name("numbers"), data)
                        codes.append("OK")
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code().name)
                if codes[0] != codes[1]:
                    disagreements.append(f"{label}: memory {codes[0]}, postgres {codes[1]}")
    finally:
        await app.stop(grace=1)
    assert not disagreements, disagreements


@pytest.mark.parametrize("expected", [0, 5, INT64_MAX])
async def test_append_refused_for_its_expected_offset_creates_no_stream(
    stub: Stub, stream_name: str, expected: int
) -> None:
    event = pb.EventData(event_type="T", data=b"{}")
    request = pb.AppendToStreamRequest(
        stream_name=stream_name, events=[event], expected_last_offset=expected
    )
    exc = await rpc_error(stub.AppendToStream(request))
    assert exc.code() == grpc.StatusCode.ABORTED, exc.details()
    await assert_absent(stub, stream_name)


@pytest.fixture
async def log_stream(stub: Stub, stream_name: str) -> str:
    await append_data(stub, stream_name, b'{"n": 1}')
    return stream_name


async def first_item(stub: Stub, request: pb.SubscribeToStreamRequest) -> Any:
    call = stub.SubscribeToStream(request, timeout=CALL_TIMEOUT)
    try:
        async for item in call:
            return item
    finally:
        call.cancel()
    return None


@pytest.mark.parametrize(
    "types", [["A\x00"], ["\x00"], ["A", "B\x00C"]], ids=["trailing", "only", "second"]
)
async def test_nul_in_event_types_filter_is_invalid(
    stub: Stub, log_stream: str, types: list[str]
) -> None:
    where = f"event_types[{len(types) - 1}]"
    read = stub.ReadStream(pb.ReadStreamRequest(stream_name=log_stream, event_types=types))
    assert_names(await rpc_error(read), where)
    subscribe = first_item(
        stub, pb.SubscribeToStreamRequest(stream_name=log_stream, event_types=types)
    )
    assert_names(await rpc_error(subscribe), where)


async def wide_prefix(stub: Stub, stream_name: str) -> pb.AllFilter:
    """A filter on WIDE_STREAMS logs of one event each: more streams than PostgreSQL
    looks up one by one, so a global read scans the log under it instead."""
    appends = [
        pb.StreamAppend(
            stream_name=f"{stream_name}-{k}", events=[pb.EventData(event_type="T", data=b"{}")]
        )
        for k in range(WIDE_STREAMS)
    ]
    for i in range(0, WIDE_STREAMS, MAX_APPENDS):
        await stub.AppendToStreams(pb.AppendToStreamsRequest(appends=appends[i : i + MAX_APPENDS]))
    return pb.AllFilter(stream_prefixes=[f"{stream_name}-"])


@pytest.mark.parametrize("position", [INT64_MAX - 1, INT64_MAX])
async def test_read_all_from_the_largest_positions_under_a_wide_prefix(
    stub: Stub, stream_name: str, position: int
) -> None:
    wanted = await wide_prefix(stub, stream_name)
    page = await stub.ReadAll(pb.ReadAllRequest(from_position=position, filter=wanted))
    assert list(page.events) == []


@pytest.mark.parametrize("position", [INT64_MAX - 1, INT64_MAX])
async def test_subscribe_to_all_from_the_largest_positions_under_a_wide_prefix(
    stub: Stub, stream_name: str, position: int
) -> None:
    wanted = await wide_prefix(stub, stream_name)
    call = stub.SubscribeToAll(
        pb.SubscribeToAllRequest(from_position=position, filter=wanted), timeout=CALL_TIMEOUT
    )
    try:
        item = await anext(aiter(call))
    finally:
        call.cancel()
    assert item.WhichOneof("content") != "event", item


def _streams_token(after: str) -> str:
    return _b64("streams-after:" + after)


def _dead_token(after: str) -> str:
    return _b64("dead-letters-after:" + after)


BAD_STREAM_TOKENS = {
    "nul": _streams_token("a\x00b"),
    "raw-nul": "abc\x00",
    "arabic-indic-digits": _streams_token("\u0661\u0662\u0663"),
    "not-a-stream-name": _streams_token("a b"),
    "20KB-garbage": "A" * 20_000,
    "20KB-well-formed": _streams_token("s" * 15_000),
}
BAD_DEAD_LETTER_TOKENS = {
    "nul": _dead_token("1\x00"),
    "arabic-indic-digits": _dead_token("\u0661\u0662"),
    "arabic-indic-digit-inside": _dead_token("1\u0662"),
    "superscript-digit": _dead_token("\u00b2"),
    "fullwidth-digit": _dead_token("\uff11"),
    "4301-digits": _dead_token("1" * 4301),
    "above-int64": _dead_token(str(2**63)),
    "above-uint64": _dead_token(str(2**64)),
    "negative": _dead_token("-1"),
    "20KB-garbage": "A" * 20_000,
}


def assert_not_echoed(exc: grpc.aio.AioRpcError, token: str) -> None:
    """A long token stays out of the message (it would not fit in the trailers)."""
    if len(token) > MAX_DETAILS:
        assert token[:100] not in (exc.details() or ""), "the token is echoed back"


@pytest.mark.parametrize("token", sorted(BAD_STREAM_TOKENS))
async def test_list_streams_refuses_a_page_token_it_did_not_issue(stub: Stub, token: str) -> None:
    value = BAD_STREAM_TOKENS[token]
    exc = await rpc_error(stub.ListStreams(pb.ListStreamsRequest(page_token=value)))
    assert_names(exc, "page_token")
    assert_not_echoed(exc, value)


@pytest.mark.parametrize("token", sorted(BAD_DEAD_LETTER_TOKENS))
async def test_list_dead_letters_refuses_a_page_token_it_did_not_issue(
    stub: Stub, stream_name: str, token: str
) -> None:
    await enqueue_data(stub, stream_name, b"{}")
    value = BAD_DEAD_LETTER_TOKENS[token]
    request = pb.ListDeadLettersRequest(stream_name=stream_name, page_token=value)
    exc = await rpc_error(stub.ListDeadLetters(request))
    assert_names(exc, "page_token")
    assert_not_echoed(exc, value)


@pytest.mark.parametrize("after", ["0", str(INT64_MAX)])
async def test_list_dead_letters_takes_any_int64_position(
    stub: Stub, stream_name: str, after: str
) -> None:
    await enqueue_data(stub, stream_name, b"{}")
    request = pb.ListDeadLettersRequest(stream_name=stream_name, page_token=_dead_token(after))
    reply = await stub.ListDeadLetters(request)
    assert list(reply.dead_letters) == []


async def test_list_streams_takes_back_its_own_token(stub: Stub, stream_name: str) -> None:
    for suffix in ("a", "b"):
        await append_data(stub, f"{stream_name}-{suffix}", b"{}")
    first = await stub.ListStreams(pb.ListStreamsRequest(prefix=stream_name, page_size=1))
    assert first.next_page_token
    second = await stub.ListStreams(
        pb.ListStreamsRequest(prefix=stream_name, page_size=1, page_token=first.next_page_token)
    )
    assert [s.stream_name for s in second.streams] == [f"{stream_name}-b"]


UNDECODABLE = {
    "invalid-tag": b"\xff\xff",
    "truncated-varint": b"\x08",
    "length-beyond-end": b"\x0a\x05ab",
    "invalid-utf8-string": b"\x0a\x01\xff",
    "overlong-varint-tag": b"\xff" * 10 + b"\x01",
    "open-group": b"\x0b",
}


def invalid_utf8(descriptor: Any) -> bytes | None:
    """A request whose first string field (nested if need be) is not UTF-8."""
    for item in descriptor.fields:
        if item.type == item.TYPE_STRING:
            return _varint(item.number << 3 | 2) + b"\x01\xff"
    for item in descriptor.fields:
        if item.type == item.TYPE_MESSAGE and item.message_type.file is pb.DESCRIPTOR:
            inner = invalid_utf8(item.message_type)
            if inner is not None:
                return _varint(item.number << 3 | 2) + _varint(len(inner)) + inner
    return None


def undecodable(rpc: str, payload: str) -> bytes:
    """UNDECODABLE[payload], with the invalid string where ``rpc``'s request has one
    (field 1 of ReadAll or SubscribeToAll is an int64: the bytes would be an unknown
    field there, not an error)."""
    if payload == "invalid-utf8-string":
        data = invalid_utf8(REQUEST_TYPES[rpc].DESCRIPTOR)
        assert data is not None, f"{rpc} has no string field"
        return data
    return UNDECODABLE[payload]


@pytest.mark.parametrize("payload", sorted(UNDECODABLE))
@pytest.mark.parametrize("rpc", sorted(REQUEST_TYPES))
async def test_bytes_that_are_not_the_request_are_invalid_argument(
    server: RunningServer, rpc: str, payload: str
) -> None:
    method = METHOD_PREFIX + rpc
    data = undecodable(rpc, payload)
    assert decode(rpc, data) is None, "the bytes are a request"
    if rpc in STREAMING:
        call: Any = server.channel.unary_stream(method, None, None)(data, timeout=5)

        async def drain() -> None:
            async for _ in call:
                pass

        exc = await rpc_error(drain())
    else:
        exc = await rpc_error(server.channel.unary_unary(method, None, None)(data, timeout=5))
    assert_names(exc, "request")


CANONICAL = "123e4567-e89b-42d3-a456-426614174000"
NON_CANONICAL_IDS = {
    "braces": "{" + CANONICAL + "}",
    "urn": "urn:uuid:" + CANONICAL,
    "arabic-indic-zeros": "\u0660" * 32,
    "arabic-indic-canonical-shape": "-".join("\u0660" * n for n in (8, 4, 4, 4, 12)),
    "fullwidth-zeros": "\uff10" * 32,
    "dashless": CANONICAL.replace("-", ""),
    "misplaced-dashes": "123e-4567e89b42d3a456-426614174000",
}


def id_request(rpc: str, name: str, event_id: str) -> tuple[Any, str]:
    """A request of ``rpc`` that carries ``event_id``, and the field it is in."""
    if rpc == "AppendToStream":
        event = pb.EventData(event_id=event_id, event_type="T", data=b"{}")
        return pb.AppendToStreamRequest(stream_name=name, events=[event]), "events[0].event_id"
    if rpc == "Enqueue":
        event = pb.EventData(event_id=event_id, event_type="T", data=b"{}")
        return pb.EnqueueRequest(stream_name=name, events=[event]), "events[0].event_id"
    if rpc == "Acknowledge":
        request: Any = pb.AcknowledgeRequest(
            stream_name=name, consumer_id="c", event_ids=[event_id]
        )
        return request, "event_ids[0]"
    if rpc == "RedriveDeadLetters":
        return pb.RedriveDeadLettersRequest(stream_name=name, event_ids=[event_id]), "event_ids[0]"
    if rpc == "Nack":
        return pb.NackRequest(stream_name=name, consumer_id="c", event_id=event_id), "event_id"
    request = pb.ExtendVisibilityRequest(
        stream_name=name,
        consumer_id="c",
        event_id=event_id,
        visibility_timeout=Duration(seconds=60),
    )
    return request, "event_id"


ID_RPCS = [
    "AppendToStream",
    "Enqueue",
    "Acknowledge",
    "RedriveDeadLetters",
    "Nack",
    "ExtendVisibility",
]


@pytest.mark.parametrize("form", sorted(NON_CANONICAL_IDS))
@pytest.mark.parametrize("rpc", ID_RPCS)
async def test_event_id_that_is_not_a_canonical_uuid_is_invalid(
    server: RunningServer, stream_name: str, rpc: str, form: str
) -> None:
    request, where = id_request(rpc, stream_name, NON_CANONICAL_IDS[form])
    exc = await rpc_error(getattr(server.stub, rpc)(request))
    assert_names(exc, where)


@pytest.mark.parametrize("case", ["lower", "upper"])
@pytest.mark.parametrize("rpc", ID_RPCS)
async def test_canonical_uuid_in_either_case_is_accepted(
    server: RunningServer, stream_name: str, rpc: str, case: str
) -> None:
    event_id = CANONICAL.upper() if case == "upper" else CANONICAL
    if rpc != "AppendToStream":
        await enqueue_data(server.stub, stream_name, b"{}")
    request, _ = id_request(rpc, stream_name, event_id)
    outcome = await send(server.channel, rpc, request.SerializeToString())
    # The id is fine; the message it names need not exist.
    assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), outcome


# ------------------------------------------------------------- AppendSession


def session_payload(request_id: int, payload: bytes) -> bytes:
    """An AppendSessionRequest carrying ``payload`` as its request, byte for byte
    (field 2, length-delimited), whether or not ``payload`` decodes."""
    head = pb.AppendSessionRequest(request_id=request_id).SerializeToString()
    length, size = bytearray(), len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return head + b"\x12" + bytes(length) + payload


async def test_append_session_answers_every_corpus_append_as_the_unary_call(
    server: RunningServer,
) -> None:
    """Every AppendToStreams case of the corpus, sent again in one AppendSession:
    each is answered once, by its id (bytes that do not decode under id 0), never
    with a server fault, and is INVALID_ARGUMENT, with the same message, exactly
    when the unary call was (validation does not depend on what the corpus wrote
    meanwhile); the session itself ends OK."""
    run = await corpus_run(server)
    cases = [
        (case, unary)
        for case, unary in zip(corpus().cases, run.outcomes, strict=True)
        if case.rpc == "AppendToStreams" and len(case.payload) < MAX_MESSAGE_BYTES - 64
    ]
    assert len(cases) >= 100
    answers: dict[int, list[pb.AppendSessionResponse]] = {}
    async with fuzz_channel(server.address) as channel:
        call = channel.stream_stream(
            METHOD_PREFIX + "AppendSession",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.AppendSessionResponse.FromString,
        )()
        with quiet_server_logs():
            for i, (case, _) in enumerate(cases, 1):
                await call.write(session_payload(i, case.payload))
            await call.done_writing()
            async for answer in call:
                answers.setdefault(answer.request_id, []).append(answer)
        assert await call.code() == grpc.StatusCode.OK
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    codes = {code.value[0]: code for code in grpc.StatusCode}
    problems = []
    for i, (case, unary) in enumerate(cases, 1):
        if case.request is None:
            continue
        got = answers.get(i, [])
        if len(got) != 1:
            problems.append(f"{case.label[:80]!r}: {len(got)} answers")
            continue
        answer = got[0]
        code = grpc.StatusCode.OK
        message = ""
        if answer.WhichOneof("outcome") == "error":
            code, message = codes[answer.error.code], answer.error.message
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            problems.append(f"{case.label[:80]!r}: server fault {message[:100]!r}")
        elif (code == invalid) != (unary.code == invalid):
            problems.append(
                f"{case.label[:80]!r}: {code.name} in the session, {unary.code.name} alone"
            )
        elif code == invalid and message != unary.details:
            problems.append(f"{case.label[:80]!r}: {message[:80]!r} != {unary.details[:80]!r}")
    undecodable = sum(1 for case, _ in cases if case.request is None)
    assert len(answers.get(0, [])) == undecodable
    assert all(a.error.code == invalid.value[0] for a in answers.get(0, []))
    assert not problems, f"{len(problems)} of {len(cases)}:\n" + "\n".join(problems[:40])

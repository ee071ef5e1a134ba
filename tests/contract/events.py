"""Events to write, and the check that one came back as it was written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from storage.records import JSON_CONTENT_TYPE, AppendResult, NewEvent, RecordedEvent


def new_event(
    event_type: str = "Tested",
    payload: Any = None,
    *,
    event_id: UUID | None = None,
    data: bytes | None = None,
    content_type: str = JSON_CONTENT_TYPE,
    metadata: Mapping[str, str] | None = None,
    correlation_id: str = "",
    causation_id: str = "",
    ordering_key: str = "",
) -> NewEvent:
    """A NewEvent with a fresh id and a JSON ``payload`` (``{"n": 0}`` unless given),
    or the raw ``data`` when given."""
    if data is None:
        data = json.dumps({"n": 0} if payload is None else payload).encode()
    return NewEvent(
        event_id=event_id or uuid.uuid4(),
        event_type=event_type,
        data=data,
        content_type=content_type,
        metadata=dict(metadata or {}),
        correlation_id=correlation_id,
        causation_id=causation_id,
        ordering_key=ordering_key,
    )


def new_events(count: int, event_type: str = "Tested") -> list[NewEvent]:
    return [new_event(event_type, {"n": i}) for i in range(count)]


def with_ids(ids: Sequence[UUID]) -> list[NewEvent]:
    """One event per given id, in order."""
    return [new_event(event_id=i) for i in ids]


def ids_of(items: Sequence[NewEvent | RecordedEvent]) -> list[UUID]:
    return [item.event_id for item in items]


def offsets_of(events: Sequence[RecordedEvent]) -> list[int]:
    return [e.offset for e in events]


def assert_recorded_as_written(
    recorded: RecordedEvent, written: NewEvent, *, stream_name: str, offset: int
) -> None:
    """Every field of ``written`` came back: JSON as an equal document, anything
    else byte for byte."""
    assert recorded.stream_name == stream_name
    assert recorded.offset == offset
    assert recorded.event_id == written.event_id
    assert recorded.event_type == written.event_type
    assert recorded.content_type == written.content_type
    if written.content_type == JSON_CONTENT_TYPE:
        assert json.loads(recorded.data) == json.loads(written.data)
    else:
        assert recorded.data == written.data
    assert dict(recorded.metadata) == dict(written.metadata)
    assert recorded.correlation_id == written.correlation_id
    assert recorded.causation_id == written.causation_id
    assert recorded.timestamp.tzinfo is not None, "timestamps are timezone-aware"


def appended_offsets(result: AppendResult) -> tuple[int, int]:
    """The first and last offset an append answered."""
    return result.first_offset, result.last_offset

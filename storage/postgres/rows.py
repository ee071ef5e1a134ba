"""Row <-> record conversions shared by the PostgreSQL capabilities."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from storage.records import JSON_CONTENT_TYPE, NewEvent, RecordedEvent

#: Columns of event-shaped rows, in the order event_from_row() expects them.
EVENT_COLUMNS = (
    "event_id, event_type, content_type, data_json, data_bytes, metadata, "
    "correlation_id, causation_id"
)


def event_arrays(events: Sequence[NewEvent]) -> tuple[list[Any], ...]:
    """Column arrays for ``unnest(...)``: one element per event, in batch order."""
    ids: list[Any] = []
    types: list[Any] = []
    content_types: list[Any] = []
    json_data: list[Any] = []
    byte_data: list[Any] = []
    metadata: list[Any] = []
    correlation: list[Any] = []
    causation: list[Any] = []
    for e in events:
        ids.append(e.event_id)
        types.append(e.event_type)
        content_types.append(e.content_type)
        if e.content_type == JSON_CONTENT_TYPE:
            json_data.append(e.data.decode("utf-8"))
            byte_data.append(None)
        else:
            json_data.append(None)
            byte_data.append(e.data)
        metadata.append(json.dumps(dict(e.metadata)) if e.metadata else "{}")
        correlation.append(e.correlation_id or None)
        causation.append(e.causation_id or None)
    return ids, types, content_types, json_data, byte_data, metadata, correlation, causation


def _metadata(text: str) -> Mapping[str, str]:
    return {} if text == "{}" else dict(json.loads(text))


def event_from_row(
    stream_name: str, offset: int, row: Mapping[str, Any], timestamp_column: str = "created_at"
) -> RecordedEvent:
    json_text = row["data_json"]
    return RecordedEvent(
        stream_name=stream_name,
        offset=offset,
        event_id=row["event_id"],
        event_type=row["event_type"],
        data=json_text.encode("utf-8") if json_text is not None else bytes(row["data_bytes"]),
        content_type=row["content_type"],
        metadata=_metadata(row["metadata"]),
        correlation_id=row["correlation_id"] or "",
        causation_id=row["causation_id"] or "",
        timestamp=row[timestamp_column],
    )

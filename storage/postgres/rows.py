"""Row <-> record conversions and page shapes shared by the PostgreSQL capabilities."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from storage.records import JSON_CONTENT_TYPE, NewEvent, RecordedEvent

T = TypeVar("T")

#: Columns of event-shaped rows, in the order event_from_row() expects them.
EVENT_COLUMNS = (
    "event_id, event_type, content_type, data_json, data_bytes, metadata, "
    "correlation_id, causation_id, ordering_key"
)
#: The columns that carry a row's bulk (storage.records.payload_size counts them).
_PAYLOAD_COLUMNS = ("data_json", "data_bytes", "metadata")


def payload_size(alias: str) -> str:
    """What a row of ``alias`` adds to a response: its recorded payload_bytes, or for
    rows written before that column existed, its stored size (no detoasting)."""
    return (
        f"coalesce({alias}.payload_bytes, pg_column_size({alias}.data_json), "
        f"pg_column_size({alias}.data_bytes), 0)"
    )


def within_budget(
    page_sql: str, columns: Sequence[str], order: str, budget: str, *, descending: bool = False
) -> str:
    """Wrap ``page_sql`` (a page of rows in ``order``, selecting ``columns`` and a
    ``size``) so that it returns the rows that fit a byte budget (storage.rules.
    within_budget: a prefix of the page whose sizes add up to at most ``budget``,
    and always the first row), plus, when the page was cut, the first row that did
    not fit with ``included`` false and its payload left out (so the database never
    sends it). Rows beyond the cut are only counted, never loaded: the payloads of
    a page's rows are read when sent, not when summed."""
    projection = ", ".join(
        f"CASE WHEN w.included THEN w.{c} END AS {c}" if c in _PAYLOAD_COLUMNS else f"w.{c}"
        for c in columns
    )
    direction = "DESC" if descending else ""
    return f"""
SELECT {projection}, w.included
  FROM (
    SELECT r.*, (r.rn = 1 OR r.running <= {budget}) AS included
      FROM (
        SELECT p.*, sum(p.size) OVER running AS running, row_number() OVER running AS rn
          FROM ({page_sql}) p
        WINDOW running AS (ORDER BY p.{order} {direction} ROWS UNBOUNDED PRECEDING)
      ) r
     WHERE r.rn <= 2 OR r.running - r.size <= {budget}
  ) w
 ORDER BY w.{order} {direction}
"""


def split_cut(rows: Sequence[T]) -> tuple[Sequence[T], T | None]:
    """The rows of a within_budget() page that fit, and the first row left out (its
    payload not loaded), None when the page was not cut."""
    if rows and not rows[-1]["included"]:  # type: ignore[index]
        return rows[:-1], rows[-1]
    return rows, None


def event_arrays(events: Iterable[NewEvent]) -> tuple[list[Any], ...]:
    """Column arrays for ``unnest(...)``: one element per event, in batch order (the
    last two hold the payload sizes and the ordering keys)."""
    ids: list[Any] = []
    types: list[Any] = []
    content_types: list[Any] = []
    json_data: list[Any] = []
    byte_data: list[Any] = []
    metadata: list[Any] = []
    correlation: list[Any] = []
    causation: list[Any] = []
    sizes: list[int] = []
    keys: list[str | None] = []
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
        sizes.append(e.size)
        keys.append(e.ordering_key or None)
    return (
        ids,
        types,
        content_types,
        json_data,
        byte_data,
        metadata,
        correlation,
        causation,
        sizes,
        keys,
    )


def _metadata(text: str) -> Mapping[str, str]:
    return {} if text == "{}" else dict(json.loads(text))


def event_from_row(
    stream_name: str,
    offset: int,
    row: asyncpg.Record | Mapping[str, Any],
    timestamp_column: str = "created_at",
    global_position: int = 0,
    parsed: dict[str, Mapping[str, str]] | None = None,
) -> RecordedEvent:
    """The event of one row; ``parsed``: metadata texts already parsed (a page's rows
    share one, since events written together usually carry the same metadata)."""
    text = row["metadata"]
    metadata = None if parsed is None else parsed.get(text)
    if metadata is None:
        metadata = _metadata(text)
        if parsed is not None:
            parsed[text] = metadata
    json_text = row["data_json"]
    return RecordedEvent(
        stream_name,
        offset,
        row["event_id"],
        row["event_type"],
        json_text.encode("utf-8") if json_text is not None else bytes(row["data_bytes"]),
        row["content_type"],
        metadata,
        row["correlation_id"] or "",
        row["causation_id"] or "",
        row[timestamp_column],
        global_position,
        row["ordering_key"] or "",
    )


def log_events_from_rows(
    rows: Iterable[asyncpg.Record], stream_name: str | None = None
) -> tuple[RecordedEvent, ...]:
    """The events of a page of log rows (``stream_offset``, ``global_position``,
    ``created_at`` and EVENT_COLUMNS; ``stream_name`` too unless given), each
    distinct metadata text parsed once for the page."""
    parsed: dict[str, Mapping[str, str]] = {}
    return tuple(
        event_from_row(
            stream_name if stream_name is not None else row["stream_name"],
            row["stream_offset"],
            row,
            global_position=row["global_position"],
            parsed=parsed,
        )
        for row in rows
    )

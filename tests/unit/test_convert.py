"""Conversions between storage records and protobuf messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from server import convert
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from storage.records import RecordedEvent, StreamType


@pytest.mark.parametrize(
    ("value", "seconds", "nanos"),
    [
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), 0, 0, id="epoch"),
        pytest.param(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 0, 1000, id="one-microsecond"),
        pytest.param(
            datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
            1_709_251_199,
            999_999_000,
            id="leap-day",
        ),
        pytest.param(
            datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            -1,
            999_999_000,
            id="just-before-1970",
        ),
        pytest.param(
            datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), -1, 0, id="whole-second-before-1970"
        ),
        pytest.param(
            datetime(1900, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC),
            -2_208_988_800,
            500_000_000,
            id="1900",
        ),
        pytest.param(datetime(1, 1, 1, tzinfo=UTC), -62_135_596_800, 0, id="year-1"),
        pytest.param(
            datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            253_402_300_799,
            999_999_000,
            id="year-9999",
        ),
        pytest.param(
            datetime(2038, 1, 19, 3, 14, 8, 123_456, tzinfo=UTC),
            2**31,
            123_456_000,
            id="past-2038",
        ),
    ],
)
def test_a_timestamp_is_exact_to_the_microsecond(value: datetime, seconds: int, nanos: int) -> None:
    stamp = convert.timestamp(value)
    assert (stamp.seconds, stamp.nanos) == (seconds, nanos)
    assert stamp.ToDatetime(tzinfo=UTC) == value


def test_a_timestamp_in_another_zone_is_the_same_instant() -> None:
    zone = timezone(timedelta(hours=-5, minutes=-30))
    local = datetime(2024, 6, 1, 12, 0, 0, 250, tzinfo=zone)
    assert convert.timestamp(local) == convert.timestamp(local.astimezone(UTC))
    assert convert.timestamp(local).ToDatetime(tzinfo=UTC) == local


def test_a_timestamp_agrees_with_protobuf_for_many_instants() -> None:
    instant = datetime(1800, 1, 1, tzinfo=UTC)
    step = timedelta(days=3659, seconds=12_345, microseconds=678_901)
    while instant.year < 9990:
        expected = Timestamp()
        expected.FromDatetime(instant)
        assert convert.timestamp(instant) == expected, instant
        instant += step


def test_an_optional_timestamp_may_be_absent() -> None:
    assert convert.optional_timestamp(None) is None
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    assert convert.optional_timestamp(moment) == convert.timestamp(moment)


@pytest.mark.parametrize(
    "value",
    [timedelta(0), timedelta(microseconds=1), timedelta(seconds=30), timedelta(hours=12, days=3)],
)
def test_a_duration_round_trips(value: timedelta) -> None:
    assert convert.duration(value).ToTimedelta() == value


def recorded(**fields: object) -> RecordedEvent:
    values: dict[str, object] = {
        "stream_name": "orders",
        "offset": 42,
        "event_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "event_type": "OrderPlaced",
        "data": b'{"total": 10}',
        "content_type": "application/json",
        "metadata": {"tenant": "t-1", "trace": "abc"},
        "correlation_id": "corr",
        "causation_id": "cause",
        "timestamp": datetime(2024, 5, 6, 7, 8, 9, 123_456, tzinfo=UTC),
        "global_position": 7,
        "ordering_key": "order-7",
    }
    values.update(fields)
    return RecordedEvent(**values)  # type: ignore[arg-type]


def test_fill_event_sets_every_field() -> None:
    record = recorded()
    message = convert.fill_event(pb.Event(), record)
    assert message.stream_name == "orders"
    assert message.offset == 42
    assert message.event_id == "12345678-1234-5678-1234-567812345678"
    assert message.event_type == "OrderPlaced"
    assert message.data == b'{"total": 10}'
    assert message.content_type == "application/json"
    assert dict(message.metadata) == {"tenant": "t-1", "trace": "abc"}
    assert message.correlation_id == "corr"
    assert message.causation_id == "cause"
    assert message.timestamp == convert.timestamp(record.timestamp)
    assert message.global_position == 7
    assert message.ordering_key == "order-7"
    every_field = {f.name for f in pb.Event.DESCRIPTOR.fields}
    assert {f.name for f, _ in message.ListFields()} == every_field


def test_fill_event_leaves_optional_fields_unset_when_empty() -> None:
    message = convert.fill_event(
        pb.Event(),
        recorded(
            metadata={},
            correlation_id="",
            causation_id="",
            data=b"",
            global_position=0,
            ordering_key="",
        ),
    )
    listed = {f.name for f, _ in message.ListFields()}
    assert listed.isdisjoint(
        {"metadata", "correlation_id", "causation_id", "data", "global_position", "ordering_key"}
    )
    assert message.metadata == {}
    assert (message.correlation_id, message.causation_id) == ("", "")


def test_fill_event_keeps_bytes_and_big_offsets_as_they_are() -> None:
    message = convert.fill_event(
        pb.Event(),
        recorded(data=b"\x00\xff\x80", content_type="application/octet-stream", offset=2**62),
    )
    assert message.data == b"\x00\xff\x80"
    assert message.offset == 2**62


def test_fill_event_keeps_timestamps_before_1970() -> None:
    moment = datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)
    message = convert.fill_event(pb.Event(), recorded(timestamp=moment))
    assert message.timestamp.ToDatetime(tzinfo=UTC) == moment


def test_event_and_add_events_build_the_same_messages() -> None:
    records = [recorded(offset=i, event_id=uuid.uuid4()) for i in range(3)]
    reply = pb.ReadStreamResponse()
    convert.add_events(reply.events, records)
    assert list(reply.events) == [convert.event(r) for r in records]
    assert [e.offset for e in reply.events] == [0, 1, 2]


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "STREAM_TYPE_UNSPECIFIED"),
        (StreamType.PERSISTENT, "STREAM_TYPE_PERSISTENT"),
        (StreamType.EPHEMERAL, "STREAM_TYPE_EPHEMERAL"),
    ],
)
def test_stream_type_names_are_the_proto_enum_names(value: StreamType | None, name: str) -> None:
    assert convert.stream_type(value) == name
    assert pb.StreamType.Value(name) == (0 if value is None else int(value))

"""Every RPC through the blocking client: plain values in and out, errors as the
client's exceptions (both backends)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventstreaming_client import (
    NO_EVENTS,
    Client,
    DuplicateEvent,
    InvalidArgument,
    MessageNotHeld,
    NewEvent,
    OutOfRange,
    StreamConfiguration,
    StreamNotFound,
    StreamType,
    WrongExpectedOffset,
    WrongStreamType,
)
from tests.support import unique_name


def test_append_and_read_plain_values(client: Client) -> None:
    name = unique_name("orders")
    first = client.append_to_stream(
        name,
        [
            NewEvent("OrderPlaced", {"id": 1}, metadata={"by": "web"}, correlation_id="c-1"),
            NewEvent("Blob", b"\x00\x01", content_type="application/octet-stream"),
        ],
        expected_last_offset=NO_EVENTS,
    )
    assert (first.first_offset, first.last_offset) == (0, 1)
    page = client.read_stream(name)
    assert page.end_of_stream
    assert [e.offset for e in page.events] == [0, 1]
    placed, blob = page.events
    assert placed.json() == {"id": 1}
    assert placed.metadata == {"by": "web"}
    assert placed.correlation_id == "c-1"
    assert isinstance(placed.timestamp, datetime)
    assert placed.timestamp.tzinfo is not None
    uuid.UUID(placed.event_id)  # the client gave every event an id
    assert blob.data == b"\x00\x01"
    assert client.get_stream_length(name) == 2
    meta = client.get_stream_metadata(name)
    assert meta.stream_type is StreamType.PERSISTENT
    assert (meta.oldest_offset, meta.newest_offset, meta.retained_count) == (0, 1, 2)


def test_iter_stream_pages_to_the_end(client: Client) -> None:
    name = unique_name()
    client.append_to_stream(name, [NewEvent("E", {"n": i}) for i in range(25)])
    found = list(client.iter_stream(name, page_size=10))
    assert [e.json()["n"] for e in found] == list(range(25))
    assert [e.offset for e in client.iter_stream(name, from_offset=20)] == [20, 21, 22, 23, 24]


def test_wrong_expected_offset_carries_the_actual_offset(client: Client) -> None:
    name = unique_name()
    client.append_to_stream(name, [NewEvent("E"), NewEvent("E")])
    with pytest.raises(WrongExpectedOffset) as caught:
        client.append_to_stream(name, [NewEvent("E")], expected_last_offset=0)
    assert caught.value.actual_last_offset == 1
    assert caught.value.expected_last_offset == 0
    assert caught.value.stream_name == name
    assert caught.value.code.name == "ABORTED"


def test_a_repeated_append_is_written_once(client: Client) -> None:
    name = unique_name()
    batch = [NewEvent("E", event_id=uuid.uuid4()), NewEvent("E", event_id=uuid.uuid4())]
    first = client.append_to_stream(name, batch)
    again = client.append_to_stream(name, batch)
    assert again == first
    assert client.get_stream_length(name) == 2
    with pytest.raises(DuplicateEvent):
        client.append_to_stream(name, [batch[0], NewEvent("E")])


def test_errors_are_the_clients_exceptions(client: Client) -> None:
    with pytest.raises(StreamNotFound) as missing:
        client.read_stream(unique_name("never"))
    assert missing.value.reason == "STREAM_NOT_FOUND"
    with pytest.raises(InvalidArgument) as invalid:
        client.append_to_stream("bad name!", [NewEvent("E")])
    assert invalid.value.field == "stream_name"
    queue = unique_name("jobs")
    client.enqueue(queue, [NewEvent("Job")])
    with pytest.raises(WrongStreamType):
        client.append_to_stream(queue, [NewEvent("E")])


def test_queue_round_trip(client: Client) -> None:
    queue = unique_name("jobs")
    ids = client.enqueue(queue, [NewEvent("Job", {"n": 1}), NewEvent("Job", {"n": 2})])
    assert len(ids) == 2
    leased = client.dequeue(queue, "w1", max_messages=10, visibility_timeout=timedelta(seconds=30))
    assert [m.event_id for m in leased] == ids
    assert leased[0].delivery_attempt == 1
    assert leased[0].visible_until is not None
    assert leased[0].visible_until > datetime.now(UTC)
    extended = client.extend_visibility(queue, "w1", ids[0], timedelta(seconds=60))
    assert extended is not None
    assert extended > leased[0].visible_until
    with pytest.raises(MessageNotHeld):
        client.nack(queue, "w2", ids[1])
    client.nack(queue, "w1", ids[1], reason="try later")
    result = client.acknowledge(queue, "w1", [ids[0], str(uuid.uuid4())])
    assert result.acknowledged == [ids[0]]
    assert list(result.failed.values()) == ["NOT_FOUND"]
    again = client.dequeue(queue, "w2", wait_time=timedelta(seconds=2))
    assert [m.event_id for m in again] == [ids[1]]
    assert again[0].delivery_attempt == 2


def test_dead_letters_and_redrive(client: Client) -> None:
    queue = unique_name("jobs")
    client.configure_stream(
        queue, StreamConfiguration(stream_type=StreamType.EPHEMERAL, max_delivery_attempts=1)
    )
    [job] = client.enqueue(queue, [NewEvent("Job")])
    client.dequeue(queue, "w1")
    client.nack(queue, "w1", job, reason="boom")
    page = client.list_dead_letters(queue)
    assert [(d.event.event_id, d.reason, d.delivery_attempts) for d in page.dead_letters] == [
        (job, "boom", 1)
    ]
    assert page.next_page_token == ""
    assert client.redrive_dead_letters(queue) == 1
    assert client.get_stream_metadata(queue).pending_count == 1


def test_consumer_offsets(client: Client) -> None:
    name = unique_name()
    client.append_to_stream(name, [NewEvent("E")] * 3)
    assert client.get_consumer_offset(name, "billing") is None
    client.commit_offset(name, "billing", 1)
    assert client.get_consumer_offset(name, "billing") == 1
    with pytest.raises(OutOfRange) as caught:
        client.commit_offset(name, "billing", 7)
    assert caught.value.newest_offset == 2


def test_configuration_listing_and_deletion(client: Client) -> None:
    prefix = unique_name("admin")
    config = client.configure_stream(
        f"{prefix}-log",
        StreamConfiguration(
            stream_type=StreamType.PERSISTENT,
            retention_max_age=timedelta(days=7),
            retention_max_count=100,
        ),
    )
    assert config.retention_max_age == timedelta(days=7)
    assert config.retention_max_count == 100
    assert client.get_stream_configuration(f"{prefix}-log") == config
    client.append_to_stream(f"{prefix}-log", [NewEvent("E")])
    client.enqueue(f"{prefix}-queue", [NewEvent("Job")])
    listed = {(s.stream_name, s.stream_type, s.length) for s in client.iter_streams(prefix=prefix)}
    assert listed == {
        (f"{prefix}-log", StreamType.PERSISTENT, 1),
        (f"{prefix}-queue", StreamType.EPHEMERAL, 1),
    }
    client.delete_stream(f"{prefix}-log")
    with pytest.raises(StreamNotFound):
        client.get_stream_length(f"{prefix}-log")

"""Persistent stream contract: every test runs on both backends through a real server."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import append, error_info, event, events, read_all

Stub = pb_grpc.EventStreamingStub


async def test_append_single_event_gets_offset_zero(stub: Stub, stream_name: str) -> None:
    reply = await append(stub, stream_name, [event()])
    assert (reply.first_offset, reply.last_offset) == (0, 0)


async def test_append_batch_gets_contiguous_offsets(stub: Stub, stream_name: str) -> None:
    first = await append(stub, stream_name, events(3))
    second = await append(stub, stream_name, events(4))
    assert (first.first_offset, first.last_offset) == (0, 2)
    assert (second.first_offset, second.last_offset) == (3, 6)
    assert [e.offset for e in await read_all(stub, stream_name)] == list(range(7))


async def test_read_returns_every_field_as_written(stub: Stub, stream_name: str) -> None:
    written = pb.EventData(
        event_id=str(uuid.uuid4()),
        event_type="OrderPlaced",
        data=json.dumps({"order": 42, "items": ["a", "b"], "total": 9.5}).encode(),
        metadata={"tenant": "acme", "source": "web"},
        correlation_id="corr-1",
        causation_id="cause-1",
    )
    await append(stub, stream_name, [written])
    (read,) = await read_all(stub, stream_name)
    assert read.stream_name == stream_name
    assert read.offset == 0
    assert read.event_id == written.event_id
    assert read.event_type == "OrderPlaced"
    assert json.loads(read.data) == {"order": 42, "items": ["a", "b"], "total": 9.5}
    assert read.content_type == "application/json"
    assert dict(read.metadata) == {"tenant": "acme", "source": "web"}
    assert (read.correlation_id, read.causation_id) == ("corr-1", "cause-1")
    assert read.timestamp.seconds > 0


async def test_server_assigns_event_id_when_empty(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(2))
    ids = [e.event_id for e in await read_all(stub, stream_name)]
    assert len({uuid.UUID(i) for i in ids}) == 2


async def test_read_from_any_offset_with_paging(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(25))
    page = await stub.ReadStream(
        pb.ReadStreamRequest(stream_name=stream_name, from_offset=7, max_count=10)
    )
    assert [e.offset for e in page.events] == list(range(7, 17))
    assert page.next_offset == 17
    assert not page.end_of_stream
    rest = await read_all(stub, stream_name, from_offset=page.next_offset, max_count=10)
    assert [e.offset for e in rest] == list(range(17, 25))
    assert [json.loads(e.data)["n"] for e in rest] == list(range(17, 25))


async def test_read_last_page_reports_end_of_stream(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(5))
    reply = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name, max_count=5))
    assert len(reply.events) == 5
    assert reply.next_offset == 5
    assert reply.end_of_stream


async def test_read_past_the_end_is_empty_and_end_of_stream(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(2))
    reply = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name, from_offset=10))
    assert list(reply.events) == []
    assert reply.end_of_stream
    assert reply.next_offset == 10


async def test_read_max_count_defaults_to_100_and_caps_at_1000(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(1005))
    default = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name))
    capped = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name, max_count=5000))
    assert len(default.events) == 100
    assert len(capped.events) == 1000
    assert capped.next_offset == 1000


async def test_stream_length_counts_events_ever_appended(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(3))
    await append(stub, stream_name, events(2))
    reply = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert reply.length == 5


async def test_stream_metadata_describes_the_log(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(4))
    meta = await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=stream_name))
    assert meta.stream_name == stream_name
    assert meta.stream_type == pb.STREAM_TYPE_PERSISTENT
    assert (meta.length, meta.retained_count) == (4, 4)
    assert (meta.oldest_offset, meta.newest_offset) == (0, 3)
    assert meta.HasField("oldest_event_timestamp")
    assert meta.HasField("newest_event_timestamp")
    oldest = meta.oldest_event_timestamp.ToDatetime()
    newest = meta.newest_event_timestamp.ToDatetime()
    created = meta.created_at.ToDatetime()
    assert created <= oldest <= newest
    assert (meta.pending_count, meta.in_flight_count, meta.dead_letter_count) == (0, 0, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, name: stub.ReadStream(pb.ReadStreamRequest(stream_name=name)),
        lambda stub, name: stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=name)),
        lambda stub, name: stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name)),
    ],
    ids=["ReadStream", "GetStreamLength", "GetStreamMetadata"],
)
async def test_unknown_stream_is_not_found(stub: Stub, stream_name: str, call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, stream_name)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert stream_name in (caught.value.details() or "")


async def test_expected_offset_minus_one_creates_a_new_stream(stub: Stub, stream_name: str) -> None:
    reply = await append(stub, stream_name, events(2), expected_last_offset=-1)
    assert (reply.first_offset, reply.last_offset) == (0, 1)


async def test_expected_offset_matching_last_offset_appends(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(3))
    reply = await append(stub, stream_name, events(1), expected_last_offset=2)
    assert reply.first_offset == 3


async def test_expected_offset_mismatch_is_aborted_with_actual_offset(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(3))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, events(1), expected_last_offset=1)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "actual last offset is 2" in (caught.value.details() or "")
    assert error_info(caught.value)["actual_last_offset"] == "2"
    length = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert length.length == 3


async def test_expected_minus_one_on_a_non_empty_stream_is_aborted(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, events(1), expected_last_offset=-1)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value)["actual_last_offset"] == "0"


async def test_retried_batch_with_ids_is_written_once(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(2))
    batch = [event(payload={"n": i}, event_id=str(uuid.uuid4())) for i in range(3)]
    first = await append(stub, stream_name, batch)
    retry = await append(stub, stream_name, batch)
    assert (
        (retry.first_offset, retry.last_offset) == (first.first_offset, first.last_offset) == (2, 4)
    )
    assert len(await read_all(stub, stream_name)) == 5


async def test_retry_is_idempotent_even_after_later_appends(stub: Stub, stream_name: str) -> None:
    batch = [event(event_id=str(uuid.uuid4())) for _ in range(2)]
    await append(stub, stream_name, batch, expected_last_offset=-1)
    await append(stub, stream_name, events(3))
    retry = await append(stub, stream_name, batch, expected_last_offset=-1)
    assert (retry.first_offset, retry.last_offset) == (0, 1)
    length = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert length.length == 5


async def test_partial_repeat_of_ids_is_already_exists(stub: Stub, stream_name: str) -> None:
    known = str(uuid.uuid4())
    await append(stub, stream_name, [event(event_id=known)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, [event(event_id=known), event(event_id=str(uuid.uuid4()))])
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert known in (caught.value.details() or "")
    length = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert length.length == 1


async def test_same_ids_in_another_order_is_already_exists(stub: Stub, stream_name: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    await append(stub, stream_name, [event(event_id=i) for i in ids])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, [event(event_id=i) for i in reversed(ids)])
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_batch_is_atomic_when_one_event_is_invalid(
    memory_stub: Stub, stream_name: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    await append(stub, stream_name, events(1))
    bad = [event(), pb.EventData(event_type="Bad", data=b"{not json")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].data" in (caught.value.details() or "")
    assert len(await read_all(stub, stream_name)) == 1


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"", b"NaN", b'{"a": Infinity}', b'"\\u0000"', b'{"k": "\\ud800"}', b"\xff\xfe"],
)
async def test_non_json_payload_is_rejected(
    memory_stub: Stub, stream_name: str, payload: bytes
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, stream_name, [pb.EventData(event_type="T", data=payload)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].data" in (caught.value.details() or "")


async def test_json_payload_comes_back_as_an_equal_document(stub: Stub, stream_name: str) -> None:
    document = {"z": [1, 2.5, None, True], "a": {"nested": "ü ✓"}, "big": 12345678901234567890}
    await append(stub, stream_name, [event(payload=document)])
    (read,) = await read_all(stub, stream_name)
    assert json.loads(read.data) == document


async def test_binary_payload_is_stored_byte_for_byte(stub: Stub, stream_name: str) -> None:
    blob = bytes(range(256)) * 4 + b"\x00\x00"
    await append(
        stub,
        stream_name,
        [pb.EventData(event_type="Blob", data=blob, content_type="application/octet-stream")],
    )
    (read,) = await read_all(stub, stream_name)
    assert read.data == blob
    assert read.content_type == "application/octet-stream"


async def test_text_payload_with_other_content_type_is_kept_verbatim(
    stub: Stub, stream_name: str
) -> None:
    text = b'{ "not":   "normalised" }'
    await append(
        stub, stream_name, [pb.EventData(event_type="T", data=text, content_type="text/plain")]
    )
    (read,) = await read_all(stub, stream_name)
    assert read.data == text


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.AppendToStreamRequest(stream_name="", events=[event()]), "stream_name"),
        (pb.AppendToStreamRequest(stream_name="bad name", events=[event()]), "stream_name"),
        (pb.AppendToStreamRequest(stream_name="-leading", events=[event()]), "stream_name"),
        (pb.AppendToStreamRequest(stream_name="x" * 201, events=[event()]), "stream_name"),
        (pb.AppendToStreamRequest(stream_name="ok", events=[]), "events"),
        (pb.AppendToStreamRequest(stream_name="ok", events=[event("")]), "events[0].event_type"),
        (
            pb.AppendToStreamRequest(stream_name="ok", events=[event("x" * 201)]),
            "events[0].event_type",
        ),
        (
            pb.AppendToStreamRequest(stream_name="ok", events=[event(event_id="nope")]),
            "events[0].event_id",
        ),
        (
            pb.AppendToStreamRequest(
                stream_name="ok",
                events=[
                    event(event_id=str(uuid.UUID(int=1))),
                    event(event_id=str(uuid.UUID(int=1))),
                ],
            ),
            "events[1].event_id",
        ),
        (
            pb.AppendToStreamRequest(stream_name="ok", events=[event(correlation_id="c" * 201)]),
            "events[0].correlation_id",
        ),
        (
            pb.AppendToStreamRequest(stream_name="ok", events=[event(metadata={"k": "a\x00b"})]),
            "events[0].metadata",
        ),
        (
            pb.AppendToStreamRequest(stream_name="ok", events=[event()], expected_last_offset=-2),
            "expected_last_offset",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_invalid_append_field_is_named(
    memory_stub: Stub, request_: pb.AppendToStreamRequest, field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendToStream(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ReadStreamRequest(stream_name="bad/name"), "stream_name"),
        (pb.ReadStreamRequest(stream_name="ok", from_offset=-1), "from_offset"),
        (pb.ReadStreamRequest(stream_name="ok", max_count=-5), "max_count"),
        (pb.ReadStreamRequest(stream_name="ok", event_types=[""]), "event_types[0]"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_invalid_read_field_is_named(
    memory_stub: Stub, request_: pb.ReadStreamRequest, field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReadStream(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)


async def test_names_with_every_allowed_character_work(stub: Stub) -> None:
    name = f"Az09._:-{uuid.uuid4().hex}"
    reply = await append(stub, name, events(1))
    assert reply.first_offset == 0


async def test_log_rpcs_on_a_queue_are_failed_precondition(stub: Stub, stream_name: str) -> None:
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=events(1)))
    calls = [
        stub.AppendToStream(pb.AppendToStreamRequest(stream_name=stream_name, events=events(1))),
        stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name)),
        stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ephemeral" in (caught.value.details() or "")


@pytest.mark.parametrize(
    "stamp",
    [
        {"seconds": 10**13},
        {"seconds": -(10**12)},
        {"seconds": 0, "nanos": -5},
    ],
)
async def test_out_of_range_from_timestamp_is_invalid_argument(
    memory_stub: Stub, stream_name: str, stamp: dict[str, int]
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    await append(stub, stream_name, events(1))
    request = pb.ReadStreamRequest(stream_name=stream_name)
    request.from_timestamp.seconds = stamp["seconds"]
    request.from_timestamp.nanos = stamp.get("nanos", 0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReadStream(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("from_timestamp")

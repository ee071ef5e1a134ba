"""AppendSession through a real server: each request answered by its id with what
AppendToStreams would answer, requests to one stream applied in the order sent,
failures that end neither their neighbours nor the session, flow control, and
an orderly end at shutdown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from storage.memory import InMemoryEventStore
from storage.records import AppendResult, ConsumerCheckpoint, StreamAppend
from tests.conftest import RunningServer, server_settings, start_server
from tests.support import Stub, event, events, wait_until

METHOD = "/eventstreaming.v1.EventStreaming/AppendSession"


def one(name: str, count: int = 1, expected: int | None = None) -> pb.AppendToStreamsRequest:
    append = pb.StreamAppend(stream_name=name, events=events(count))
    if expected is not None:
        append.expected_last_offset = expected
    return pb.AppendToStreamsRequest(appends=[append])


def session_request(request_id: int, request: pb.AppendToStreamsRequest) -> pb.AppendSessionRequest:
    return pb.AppendSessionRequest(request_id=request_id, request=request)


async def session(
    stub: Stub, requests: Sequence[pb.AppendSessionRequest]
) -> list[pb.AppendSessionResponse]:
    """Send every request without waiting, half-close, and collect the answers."""
    call = stub.AppendSession()
    for request in requests:
        await call.write(request)
    await call.done_writing()
    answers = [answer async for answer in call]
    assert await call.code() == grpc.StatusCode.OK
    return answers


def unary_status(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a unary call failed with."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no status details")


def info(status: status_pb2.Status) -> list[dict[str, str]]:
    found = []
    for detail in status.details:
        unpacked = error_details_pb2.ErrorInfo()
        assert detail.Unpack(unpacked)
        found.append({"reason": unpacked.reason, **unpacked.metadata})
    return found


async def test_each_request_is_answered_as_the_unary_call_answers_it(
    stub: Stub, stream_name: str
) -> None:
    known = event(event_id=str(uuid.uuid4()))
    await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=f"{stream_name}-d", events=[known])
    )
    await stub.Enqueue(pb.EnqueueRequest(stream_name=f"{stream_name}-q", events=events(1)))
    await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=f"{stream_name}-in", events=events(2))
    )
    await stub.CommitOffset(
        pb.CommitOffsetRequest(stream_name=f"{stream_name}-in", consumer_group="g", offset=1)
    )
    refused = {
        2: one(f"{stream_name}-d", expected=4),  # stale expectation
        3: pb.AppendToStreamsRequest(
            appends=[
                pb.StreamAppend(
                    stream_name=f"{stream_name}-d",
                    events=[known, event(event_id=str(uuid.uuid4()))],
                )
            ]
        ),  # duplicate
        4: one(f"{stream_name}-q"),  # a queue
        5: one(""),  # invalid
        6: pb.AppendToStreamsRequest(
            appends=[pb.StreamAppend(stream_name=f"{stream_name}-out", events=events(1))],
            checkpoint=pb.ConsumerCheckpoint(
                stream_name=f"{stream_name}-in", consumer_group="g", offset=1
            ),
        ),  # processed before
        7: pb.AppendToStreamsRequest(),  # nothing to do
    }
    requests = [
        session_request(1, one(f"{stream_name}-a", 2)),
        *(session_request(i, r) for i, r in refused.items()),
        session_request(8, one(f"{stream_name}-a", 1, expected=1)),
    ]
    answers = {a.request_id: a for a in await session(stub, requests)}
    assert sorted(answers) == list(range(1, 9))
    assert answers[1].WhichOneof("outcome") == "result"
    assert [(r.first_offset, r.last_offset) for r in answers[1].result.results] == [(0, 1)]
    assert [(r.first_offset, r.last_offset) for r in answers[8].result.results] == [(2, 2)]
    # Each refusal is the unary call's own (the refused changed nothing, so the
    # same call made now fails the same way).
    for request_id, request in refused.items():
        assert answers[request_id].WhichOneof("outcome") == "error", request_id
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.AppendToStreams(request)
        error = answers[request_id].error
        assert error.code == failed.value.code().value[0], request_id
        assert error.message == failed.value.details(), request_id
        assert info(error) == info(unary_status(failed.value)), request_id
    codes = {i: answers[i].error.code for i in refused}
    assert codes == {
        2: grpc.StatusCode.ABORTED.value[0],
        3: grpc.StatusCode.ALREADY_EXISTS.value[0],
        4: grpc.StatusCode.FAILED_PRECONDITION.value[0],
        5: grpc.StatusCode.INVALID_ARGUMENT.value[0],
        6: grpc.StatusCode.ALREADY_EXISTS.value[0],
        7: grpc.StatusCode.INVALID_ARGUMENT.value[0],
    }
    assert info(answers[2].error)[0]["actual_last_offset"] == "0"
    assert "stream_name" in answers[5].error.message


async def test_requests_to_one_stream_apply_in_the_order_sent(stub: Stub, stream_name: str) -> None:
    """Each request expects the offset its predecessor leaves: any reordering
    would fail one with ABORTED."""
    count = 300
    requests = []
    for i in range(count):
        requests.append(session_request(i, one(f"{stream_name}-a", 1, expected=i - 1)))
        requests.append(session_request(count + i, one(f"{stream_name}-b-{i % 7}")))
    answers = await session(stub, requests)
    assert len(answers) == 2 * count
    by_id = {a.request_id: a for a in answers}
    for i in range(count):
        assert by_id[i].WhichOneof("outcome") == "result", by_id[i].error.message
        assert by_id[i].result.results[0].first_offset == i
    positions = [by_id[i].result.results[0].first_global_position for i in range(count)]
    assert positions == sorted(positions)


async def test_checkpoints_of_one_group_apply_in_the_order_sent(
    stub: Stub, stream_name: str
) -> None:
    await stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=f"{stream_name}-in", events=events(50))
    )
    requests = [
        session_request(
            i,
            pb.AppendToStreamsRequest(
                appends=[pb.StreamAppend(stream_name=f"{stream_name}-out-{i}", events=events(1))],
                checkpoint=pb.ConsumerCheckpoint(
                    stream_name=f"{stream_name}-in", consumer_group="g", offset=i
                ),
            ),
        )
        for i in range(50)
    ]
    answers = await session(stub, requests)
    failed = [a.error.message for a in answers if a.WhichOneof("outcome") == "error"]
    assert failed == []
    offset = await stub.GetConsumerOffset(
        pb.GetConsumerOffsetRequest(stream_name=f"{stream_name}-in", consumer_group="g")
    )
    assert offset.offset == 49


async def test_request_ids_are_echoed_whatever_they_are(stub: Stub, stream_name: str) -> None:
    ids = [0, 2**64 - 1, 7, 7, 3]
    answers = await session(stub, [session_request(i, one(stream_name)) for i in ids])
    assert sorted(a.request_id for a in answers) == sorted(ids)
    assert all(a.WhichOneof("outcome") == "result" for a in answers)


async def test_a_retried_request_answers_the_original_results(stub: Stub, stream_name: str) -> None:
    request = pb.AppendToStreamsRequest(
        appends=[
            pb.StreamAppend(
                stream_name=stream_name,
                events=[event(event_id=str(uuid.uuid4())) for _ in range(3)],
            )
        ]
    )
    first, again = (
        await session(stub, [session_request(1, request)]),
        await session(stub, [session_request(2, request)]),
    )
    assert first[0].result.results == again[0].result.results
    length = await stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert length.length == 3


async def test_request_bytes_that_do_not_decode_are_answered_and_the_session_goes_on(
    server: RunningServer, stream_name: str
) -> None:
    call = server.channel.stream_stream(
        METHOD,
        request_serializer=lambda raw: raw,
        response_deserializer=pb.AppendSessionResponse.FromString,
    )()
    await call.write(b"\xff\xff\xff")
    await call.write(session_request(9, one(stream_name)).SerializeToString())
    await call.done_writing()
    answers = {a.request_id: a async for a in call}
    assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "request" in answers[0].error.message
    assert answers[9].WhichOneof("outcome") == "result"
    assert await call.code() == grpc.StatusCode.OK


async def test_an_empty_session_ends_cleanly(stub: Stub) -> None:
    assert await session(stub, []) == []


async def test_a_session_cancelled_midway_leaves_a_gapless_prefix(
    server: RunningServer, stream_name: str
) -> None:
    call = server.stub.AppendSession()
    for i in range(200):
        await call.write(session_request(i, one(stream_name, 1, expected=i - 1)))
    first = await call.read()
    assert first.WhichOneof("outcome") == "result"
    call.cancel()
    sessions = server.app.sessions
    assert sessions is not None
    await wait_until(lambda: not sessions._readers)
    read = await server.stub.ReadStream(
        pb.ReadStreamRequest(stream_name=stream_name, from_offset=0, max_count=1000)
    )
    assert [e.offset for e in read.events] == list(range(len(read.events)))
    assert len(read.events) >= 1


class GatedStore(InMemoryEventStore):
    """Appends wait until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def append_to_streams(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None = None
    ) -> tuple[AppendResult, ...]:
        self.waiting += 1
        await self.gate.wait()
        return await super().append_to_streams(appends, checkpoint)


@pytest_asyncio.fixture
async def gated() -> AsyncIterator[tuple[RunningServer, GatedStore]]:
    store = GatedStore()
    running = await start_server(
        server_settings("memory", append_session_max_in_flight=4), "memory", store
    )
    try:
        yield running, store
    finally:
        store.gate.set()
        await running.close()


async def test_a_session_stops_reading_at_its_limit_of_unanswered_requests(
    gated: tuple[RunningServer, GatedStore], stream_name: str
) -> None:
    running, store = gated
    sessions = running.app.sessions
    assert sessions is not None
    call = running.stub.AppendSession()
    for i in range(50):
        await call.write(session_request(i, one(stream_name, 1, expected=i - 1)))
    await wait_until(lambda: store.waiting == 4)
    await asyncio.sleep(0.3)  # a chance to read more, were it not held back
    assert store.waiting == 4
    assert sessions.peak_in_flight == 4
    store.gate.set()
    await call.done_writing()
    answers = [a async for a in call]
    assert [a.request_id for a in answers] == list(range(50))
    assert all(a.WhichOneof("outcome") == "result" for a in answers)
    assert sessions.peak_in_flight == 4


async def test_shutdown_answers_what_was_read_then_ends_the_session_unavailable(
    gated: tuple[RunningServer, GatedStore], stream_name: str
) -> None:
    running, store = gated
    call = running.stub.AppendSession()
    for i in range(3):
        await call.write(session_request(i, one(stream_name)))
    await wait_until(lambda: store.waiting == 3)
    stopping = asyncio.create_task(running.app.stop(grace=10))
    await wait_until(lambda: running.app.sessions is not None and running.app.sessions.closed)
    store.gate.set()
    answers = [await call.read() for _ in range(3)]
    assert sorted(a.request_id for a in answers) == [0, 1, 2]
    assert all(a.WhichOneof("outcome") == "result" for a in answers)
    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (await call.details() or "")
    await asyncio.wait_for(stopping, 10)


async def test_an_idle_session_does_not_hold_up_shutdown(
    gated: tuple[RunningServer, GatedStore],
) -> None:
    running, _ = gated
    call = running.stub.AppendSession()
    await call.wait_for_connection()
    sessions = running.app.sessions
    assert sessions is not None
    await wait_until(lambda: len(sessions._readers) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await running.app.stop(grace=30)
    assert loop.time() - started < 15  # not the grace period
    assert await call.code() == grpc.StatusCode.UNAVAILABLE

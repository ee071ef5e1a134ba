"""Consume streams through the real server, on both backends: flow control, acks,
nacks and extends on the stream, per-delivery fencing, release on half-close, and
wake-ups without polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest

from server.consume import ConsumeStream
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer, server_settings, start_server
from tests.support import (
    ConsumeClient,
    Stub,
    TcpProxy,
    append,
    configure_queue,
    dequeue,
    enqueue,
    epoch,
    error_info,
    event,
    ids_of,
    metadata,
    seconds,
    wait_until,
)


def _streams(server: RunningServer) -> list[ConsumeStream]:
    assert server.app.consumers is not None
    return list(server.app.consumers.active)


async def test_consume_keeps_at_most_max_outstanding_messages_with_the_client(
    stub: Stub, stream_name: str
) -> None:
    ids = await enqueue(stub, stream_name, 7)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=3)
    first = await client.receive(3)
    assert ids_of(first) == ids[:3]
    assert all(m.delivery_attempt == 1 and m.receipt for m in first)
    await asyncio.sleep(0.3)
    assert client.messages.empty(), "more than max_outstanding were pushed"
    result = await client.ack(event_ids=ids_of(first[:2]))
    assert list(result.succeeded) == ids[:2]
    assert ids_of(await client.receive(2)) == ids[3:5]
    assert await client.close() == grpc.StatusCode.OK


async def test_results_report_each_id(stub: Stub, stream_name: str) -> None:
    ids = await enqueue(stub, stream_name, 2)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=2)
    await client.receive(2)
    unknown = "0b1f8a52-7a4e-4c8b-9a51-1d0f2b3c4d5e"
    result = await client.ack(event_ids=[ids[0], unknown])
    assert list(result.succeeded) == [ids[0]]
    assert [(f.event_id, f.reason) for f in result.failed] == [(unknown, "NOT_FOUND")]
    again = await client.ack(event_ids=[ids[0]])
    assert [(f.event_id, f.reason) for f in again.failed] == [(ids[0], "NOT_FOUND")]
    await client.close()


async def test_acks_sent_together_are_answered_one_by_one_in_order(
    stub: Stub, stream_name: str
) -> None:
    ids = await enqueue(stub, stream_name, 20)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=20)
    await client.receive(20)
    request_ids = []
    for event_id in ids:
        request_ids.append(client.request_id())
        client.send(
            pb.ConsumeRequest(ack=pb.ConsumeAck(request_id=request_ids[-1], event_ids=[event_id]))
        )
    request_ids.append(client.request_id())
    client.send(pb.ConsumeRequest(ack=pb.ConsumeAck(request_id=request_ids[-1], event_ids=ids[:1])))
    results = [await client.result(r) for r in request_ids]
    assert [list(r.succeeded) for r in results[:-1]] == [[i] for i in ids]
    assert [f.reason for f in results[-1].failed] == ["NOT_FOUND"]
    assert (await metadata(stub, stream_name)).retained_count == 0
    await client.close()


async def test_nack_and_extend_on_the_stream(stub: Stub, stream_name: str) -> None:
    first, second = await enqueue(stub, stream_name, 2)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=1, visibility=30)
    (message,) = await client.receive()
    extended = await client.extend(event_id=first, visibility_timeout=seconds(600))
    assert list(extended.succeeded) == [first]
    assert epoch(extended.visible_until) > epoch(message.visible_until) + 500
    nacked = await client.nack(receipt=message.receipt, delay=seconds(0), reason="retry")
    assert list(nacked.succeeded) == [first]
    # Given back and visible at once: it comes again, before the second.
    (again,) = await client.receive()
    assert (again.event.event_id, again.delivery_attempt) == (first, 2)
    stale = await client.nack(receipt=message.receipt)
    assert [(f.event_id, f.reason, f.receipt) for f in stale.failed] == [
        (first, "NOT_HELD", message.receipt)
    ]
    await client.ack(receipts=[again.receipt])
    (last,) = await client.receive()
    assert last.event.event_id == second
    await client.close()


async def test_a_stale_ack_on_the_stream_leaves_a_newer_delivery_alone(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=5, visibility=0.3)
    (first,) = await client.receive()
    # Not acked: its lease runs out and the same stream gets it again.
    (second,) = await client.receive()
    assert (second.event.event_id, second.delivery_attempt) == (only, 2)
    stale = await client.ack(receipts=[first.receipt])
    assert [f.reason for f in stale.failed] == ["NOT_HELD"]
    done = await client.ack(receipts=[second.receipt])
    assert list(done.succeeded) == [only]
    await client.close()


async def test_half_close_releases_held_messages_at_once(stub: Stub, stream_name: str) -> None:
    ids = await enqueue(stub, stream_name, 3)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=2, visibility=600)
    held = await client.receive(2)
    await client.ack(event_ids=[held[0].event.event_id])
    assert ids_of(await client.receive()) == ids[2:]
    assert await client.close() == grpc.StatusCode.OK
    # Those still held are visible again at once, their attempt counted.
    again = await dequeue(stub, stream_name, "other", max_messages=10)
    assert [(m.event.event_id, m.delivery_attempt) for m in again] == [(ids[1], 2), (ids[2], 2)]


async def test_a_broken_connection_leaves_messages_to_their_leases(
    stub: Stub, stream_name: str
) -> None:
    (only,) = await enqueue(stub, stream_name)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=1, visibility=3)
    (held,) = await client.receive()
    client.cancel()
    await client.finished()
    # Not given back: while its lease runs, nobody else gets it.
    if time.time() < epoch(held.visible_until) - 1:
        assert await dequeue(stub, stream_name, "other") == []
    (again,) = await dequeue(stub, stream_name, "other", wait=15)
    assert (again.event.event_id, again.delivery_attempt) == (only, 2)
    assert time.time() >= epoch(held.visible_until) - 0.05


async def test_a_cut_connection_is_not_taken_for_a_half_close(
    server: RunningServer, stub: Stub, stream_name: str
) -> None:
    """A connection that breaks under a stream (no half-close sent) leaves the held
    message to its lease, however the break and the end of the requests interleave
    in the server: tried twenty times."""
    proxy = await TcpProxy("127.0.0.1", server.app.port).start()
    try:
        for attempt in range(20):
            name = f"{stream_name}-{attempt}"
            (only,) = await enqueue(stub, name)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                client = await ConsumeClient.start(
                    Stub(channel), name, "c", max_outstanding=1, visibility=60
                )
                (held,) = await client.receive()
                assert held.event.event_id == only
                proxy.cut()
                await client.finished()
                await wait_until(lambda: not _streams(server), timeout=10)
                assert await dequeue(stub, name, "other") == [], f"given back on try {attempt}"
            proxy.restore()
    finally:
        await proxy.close()


async def test_a_lease_that_runs_out_frees_room_in_the_window(stub: Stub, stream_name: str) -> None:
    first, second = await enqueue(stub, stream_name, 2)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=1, visibility=0.5)
    (message,) = await client.receive()
    assert message.event.event_id == first
    # Never acked: once its lease has run out, the window takes the next message
    # (the same one again, being the oldest visible).
    (following,) = await client.receive()
    assert following.event.event_id in (first, second)
    await client.close()


async def test_an_enqueue_wakes_an_idle_stream_that_costs_nothing_meanwhile(
    quiet_server: RunningServer, stream_name: str
) -> None:
    stub = quiet_server.stub
    await configure_queue(stub, stream_name)
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=5)
    await wait_until(lambda: stream_name in quiet_server.store.signals.waited())
    (stream,) = [s for s in _streams(quiet_server) if s.args.stream_name == stream_name]
    looks = stream.looks
    await asyncio.sleep(1.0)
    assert stream.looks == looks, "an idle stream looked at the queue"
    started = time.monotonic()
    (only,) = await enqueue(stub, stream_name)
    (message,) = await client.receive()
    assert message.event.event_id == only
    assert time.monotonic() - started < 5
    await client.close()


async def test_idle_streams_of_a_queue_woken_together_look_once(
    quiet_server: RunningServer, stream_name: str
) -> None:
    stub = quiet_server.stub
    await configure_queue(stub, stream_name)
    clients = [
        await ConsumeClient.start(stub, stream_name, f"c{i}", max_outstanding=5) for i in range(4)
    ]
    streams: list[ConsumeStream] = []

    def waiting() -> bool:
        streams[:] = [s for s in _streams(quiet_server) if s.args.stream_name == stream_name]
        return len(streams) == 4 and len(quiet_server.store.signals.waited()) > 0

    await wait_until(waiting)
    await asyncio.sleep(0.2)
    looks = sum(s.looks for s in streams)
    (only,) = await enqueue(stub, stream_name)
    delivered = []
    for client in clients:
        with contextlib.suppress(TimeoutError):
            delivered += await client.receive(timeout=0.5)
    assert ids_of(delivered) == [only]
    # Every stream woke; one looked and leased, the others skipped their look.
    assert sum(s.looks for s in streams) == looks + 1
    assert sum(s.skipped for s in streams) >= 3
    for client in clients:
        await client.close()


async def test_batches_carry_the_messages_leased_together(stub: Stub, stream_name: str) -> None:
    ids = await enqueue(stub, stream_name, 25)
    outgoing: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()
    outgoing.put_nowait(
        pb.ConsumeRequest(
            start=pb.ConsumeStart(
                stream_name=stream_name, consumer_id="b", max_outstanding=20, max_batch=8
            )
        )
    )

    async def requests() -> Any:
        while (request := await outgoing.get()) is not None:
            yield request

    call = stub.Consume(requests())
    sizes: list[int] = []
    received: list[str] = []
    async for response in call:
        assert response.WhichOneof("kind") == "batch"
        sizes.append(len(response.batch.messages))
        received += ids_of(list(response.batch.messages))
        if len(received) == 20:
            break
    # At most max_batch per response, and never more than max_outstanding held.
    assert max(sizes) <= 8
    assert received == ids[:20]
    outgoing.put_nowait(None)
    call.cancel()


async def test_ordering_keys_hold_on_a_stream(stub: Stub, stream_name: str) -> None:
    reply = await stub.Enqueue(
        pb.EnqueueRequest(
            stream_name=stream_name,
            events=[
                pb.EventData(event_type="T", data=b"{}", ordering_key="k"),
                pb.EventData(event_type="T", data=b"{}", ordering_key="k"),
            ],
        )
    )
    first, second = reply.event_ids
    client = await ConsumeClient.start(stub, stream_name, "c", max_outstanding=10)
    (message,) = await client.receive()
    assert (message.event.event_id, message.event.ordering_key) == (first, "k")
    await asyncio.sleep(0.2)
    assert client.messages.empty()
    await client.ack(event_ids=[first])
    (following,) = await client.receive()
    assert following.event.event_id == second
    await client.close()


async def test_consume_on_a_log_is_refused(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name)
    client = await ConsumeClient.start(stub, stream_name, "c")
    assert await client.finished() == grpc.StatusCode.FAILED_PRECONDITION


# -- invalid requests ------------------------------------------------------------------

_ID = "6b8c1a52-7a4e-4c8b-9a51-1d0f2b3c4d5e"


def _start(**fields: Any) -> pb.ConsumeRequest:
    values: dict[str, Any] = {"stream_name": "q", "consumer_id": "c", "max_outstanding": 1}
    values.update(fields)
    return pb.ConsumeRequest(start=pb.ConsumeStart(**values))


INVALID_STREAMS: list[tuple[str, list[pb.ConsumeRequest]]] = [
    ("start", []),
    ("start", [pb.ConsumeRequest(ack=pb.ConsumeAck(event_ids=[_ID]))]),
    ("start.stream_name", [_start(stream_name="")]),
    ("start.consumer_id", [_start(consumer_id="")]),
    ("start.max_outstanding", [_start(max_outstanding=0)]),
    ("start.max_outstanding", [_start(max_outstanding=1001)]),
    ("start.visibility_timeout", [_start(visibility_timeout=seconds(13 * 3600))]),
    ("start.max_batch", [_start(max_batch=101)]),
    ("start.max_batch", [_start(max_batch=-1)]),
    ("start", [_start(), _start()]),
    ("kind", [_start(), pb.ConsumeRequest()]),
    ("ack.event_ids", [_start(), pb.ConsumeRequest(ack=pb.ConsumeAck())]),
    ("ack.event_ids[0]", [_start(), pb.ConsumeRequest(ack=pb.ConsumeAck(event_ids=["x"]))]),
    (
        "ack.receipts",
        [_start(), pb.ConsumeRequest(ack=pb.ConsumeAck(event_ids=[_ID], receipts=["r"]))],
    ),
    ("ack.receipts[0]", [_start(), pb.ConsumeRequest(ack=pb.ConsumeAck(receipts=["nope"]))]),
    ("nack.event_id", [_start(), pb.ConsumeRequest(nack=pb.ConsumeNack())]),
    (
        "nack.delay",
        [_start(), pb.ConsumeRequest(nack=pb.ConsumeNack(event_id=_ID, delay=seconds(-1)))],
    ),
    (
        "extend.visibility_timeout",
        [_start(), pb.ConsumeRequest(extend=pb.ConsumeExtend(event_id=_ID))],
    ),
    (
        "extend.receipt",
        [
            _start(),
            pb.ConsumeRequest(
                extend=pb.ConsumeExtend(event_id=_ID, receipt="x", visibility_timeout=seconds(5))
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    ("field", "requests"),
    INVALID_STREAMS,
    ids=[f"{field}-{i}" for i, (field, _) in enumerate(INVALID_STREAMS)],
)
async def test_an_invalid_request_ends_the_stream_naming_the_field(
    memory_stub: Stub, field: str, requests: list[pb.ConsumeRequest]
) -> None:
    async def sent() -> Any:
        for request in requests:
            yield request
        await asyncio.sleep(5)  # the server answers before the client half-closes

    call = memory_stub.Consume(sent())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).get("field") == field
    assert (caught.value.details() or "").startswith(f"{field}:")


@pytest.fixture(params=["memory", "postgres"])
def small_pages(request: pytest.FixtureRequest) -> tuple[str, str]:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""
    return request.param, dsn


async def test_deliveries_cut_by_the_byte_budget_go_on_without_a_write(
    small_pages: tuple[str, str], stream_name: str
) -> None:
    backend, dsn = small_pages
    server = await start_server(server_settings(backend, dsn, page_bytes=1024), backend)
    try:
        stub = server.stub
        await configure_queue(stub, stream_name)
        clients = [
            await ConsumeClient.start(stub, stream_name, f"c{i}", max_outstanding=50)
            for i in range(2)
        ]
        await wait_until(lambda: stream_name in server.store.signals.waited())
        big = [event(payload={"pad": "x" * 600, "n": i}) for i in range(12)]
        reply = await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=big))
        received: list[str] = []

        async def everything() -> bool:
            for client in clients:
                while not client.messages.empty():
                    received.append(client.messages.get_nowait().event.event_id)
            return len(received) == len(big)

        # Each look takes about one message (1 KiB budget); no write follows the
        # enqueue, yet every message arrives.
        await wait_until(everything, timeout=20)
        assert sorted(received) == sorted(reply.event_ids)
        for client in clients:
            await client.close()
    finally:
        await server.close()


async def test_a_stopping_server_ends_its_streams_unavailable(stream_name: str) -> None:
    server = await start_server(server_settings("memory"), "memory")
    try:
        (only,) = await enqueue(server.stub, stream_name)
        client = await ConsumeClient.start(server.stub, stream_name, "c", max_outstanding=5)
        (held,) = await client.receive()
        assert held.event.event_id == only
        stopping = asyncio.create_task(server.app.stop(grace=10))
        assert await client.finished() == grpc.StatusCode.UNAVAILABLE
        await asyncio.wait_for(stopping, 10)
    finally:
        await server.channel.close()

"""DeleteStream racing writes on the same name: every call ends cleanly (OK,
NOT_FOUND, or a write that lands in a fresh stream; a type conflict when an enqueue
made the fresh stream a queue), never INTERNAL, and what remains is consistent."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer
from tests.support import Stub, event, read_all, unique_name

ROUNDS = 60
#: What a call racing a delete may answer: done, the stream gone, a stream of the
#: other type made meanwhile, an expectation or an offset that a fresh stream does
#: not meet, a retry of a configure that kept losing the race.
CLEAN = {"OK", "NOT_FOUND", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE"}

Call = Callable[[Stub, str], Awaitable[object]]


def _calls() -> dict[str, Call]:
    return {
        "append": lambda stub, name: stub.AppendToStream(
            pb.AppendToStreamRequest(stream_name=name, events=[event()])
        ),
        "append-expecting-new": lambda stub, name: stub.AppendToStream(
            pb.AppendToStreamRequest(stream_name=name, events=[event()], expected_last_offset=-1)
        ),
        "enqueue": lambda stub, name: stub.Enqueue(
            pb.EnqueueRequest(stream_name=name, events=[event()])
        ),
        "configure": lambda stub, name: stub.ConfigureStream(
            pb.ConfigureStreamRequest(
                stream_name=name,
                configuration=pb.StreamConfiguration(retention_max_count=10),
            )
        ),
        "commit": lambda stub, name: stub.CommitOffset(
            pb.CommitOffsetRequest(stream_name=name, consumer_group="g", offset=0)
        ),
        "dequeue": lambda stub, name: stub.Dequeue(
            pb.DequeueRequest(stream_name=name, consumer_id="c")
        ),
        "metadata": lambda stub, name: stub.GetStreamMetadata(
            pb.GetStreamMetadataRequest(stream_name=name)
        ),
        "delete": lambda stub, name: stub.DeleteStream(pb.DeleteStreamRequest(stream_name=name)),
    }


async def _outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return (
            f"{exc.code().name}: {exc.details()}"
            if exc.code().name not in CLEAN
            else exc.code().name
        )
    return "OK"


async def test_delete_racing_every_write_ends_every_call_cleanly(server: RunningServer) -> None:
    stub = server.stub
    seen: collections.Counter[str] = collections.Counter()
    for round_ in range(ROUNDS):
        name = unique_name("race")
        if round_ % 2:
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=[event()]))
        # Every call three times over (so the stream is made, deleted and made again
        # under each of them), in an order that shifts every round.
        order = [(f"{label}#{i}", call) for i in range(3) for label, call in _calls().items()]
        shift = (round_ * 7) % len(order)
        order = order[shift:] + order[:shift]
        outcomes = await asyncio.gather(*(_outcome(call(stub, name)) for _, call in order))
        seen.update(outcomes)
        unclean = [
            f"{label}: {outcome}"
            for (label, _), outcome in zip(order, outcomes, strict=True)
            if outcome not in CLEAN
        ]
        assert not unclean, f"round {round_}: {unclean}"
        # Whatever is left is a whole stream: its metadata and events agree.
        listed = await stub.ListStreams(pb.ListStreamsRequest(prefix=name))
        if not listed.streams:
            continue
        meta = await stub.GetStreamMetadata(pb.GetStreamMetadataRequest(stream_name=name))
        if meta.stream_type == pb.STREAM_TYPE_PERSISTENT:
            stored = await read_all(stub, name)
            first = meta.length - meta.retained_count
            assert [e.offset for e in stored] == list(range(first, meta.length))
    assert seen["OK"] > 0
    assert seen["NOT_FOUND"] > 0, "no call ever met a deleted stream: the race never happened"

"""The global log through a real server, on both backends: ReadAll, SubscribeToAll
(history, CaughtUp, live events, filters, checkpoints), AppendToStreams and its
errors, backward ReadStream, and consumer groups on $all."""

from __future__ import annotations

import grpc
import pytest

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.subscriber import Subscriber
from tests.support import Stub, append, error_info, event, events

ALL = "$all"


def request(appends: list[tuple[str, int, int | None]]) -> pb.AppendToStreamsRequest:
    """An AppendToStreams request: (stream, how many events, expected last offset)."""
    return pb.AppendToStreamsRequest(
        appends=[
            pb.StreamAppend(stream_name=name, events=events(count), expected_last_offset=expected)
            if expected is not None
            else pb.StreamAppend(stream_name=name, events=events(count))
            for name, count, expected in appends
        ]
    )


def details(exc: grpc.aio.AioRpcError) -> list[dict[str, str]]:
    """Every ErrorInfo of a rich error status."""
    from google.rpc import error_details_pb2, status_pb2

    found = []
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    found.append(dict(info.metadata))
    return found


def prefix_filter(prefix: str) -> pb.AllFilter:
    return pb.AllFilter(stream_prefixes=[prefix])


async def test_append_answers_carry_global_positions(stub: Stub, stream_name: str) -> None:
    reply = await append(stub, stream_name, 3)
    assert reply.last_global_position - reply.first_global_position == 2
    page = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name))
    assert [e.global_position for e in page.events] == list(
        range(reply.first_global_position, reply.last_global_position + 1)
    )


async def test_append_to_streams_answers_one_result_per_append(
    stub: Stub, stream_name: str
) -> None:
    reply = await stub.AppendToStreams(
        request([(f"{stream_name}-b", 2, -1), (f"{stream_name}-a", 1, None)])
    )
    first, second = reply.results
    assert (first.first_offset, first.last_offset, second.first_offset) == (0, 1, 0)
    assert second.first_global_position == first.last_global_position + 1


async def test_stale_expectations_are_aborted_naming_every_stream(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, f"{stream_name}-a", 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendToStreams(
            request(
                [
                    (f"{stream_name}-a", 1, 0),
                    (f"{stream_name}-b", 1, 3),
                    (f"{stream_name}-c", 1, -1),
                ]
            )
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    failures = {d["stream_name"]: d["actual_last_offset"] for d in details(caught.value)}
    assert failures == {f"{stream_name}-a": "1", f"{stream_name}-b": "-1"}
    assert f"{stream_name}-a" in (caught.value.details() or "")
    page = await stub.ReadAll(pb.ReadAllRequest(filter=prefix_filter(f"{stream_name}-")))
    assert len(page.events) == 2


async def test_a_stream_named_twice_is_invalid(memory_stub: Stub, stream_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_stub.AppendToStreams(request([(stream_name, 1, None), (stream_name, 1, None)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == "appends[1].stream_name"


async def test_nothing_to_do_is_invalid(memory_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_stub.AppendToStreams(pb.AppendToStreamsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == "appends"


async def test_an_input_processed_before_is_already_exists(stub: Stub, stream_name: str) -> None:
    source = await append(stub, f"{stream_name}-in", 1)
    call = request([(f"{stream_name}-out", 1, None)])
    call.checkpoint.CopyFrom(
        pb.ConsumerCheckpoint(
            stream_name=ALL, consumer_group=stream_name, offset=source.last_global_position
        )
    )
    await stub.AppendToStreams(call)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendToStreams(call)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(caught.value)["committed_offset"] == str(source.last_global_position)
    committed = await stub.GetConsumerOffset(
        pb.GetConsumerOffsetRequest(stream_name=ALL, consumer_group=stream_name)
    )
    assert committed.offset == source.last_global_position


async def test_read_all_filters_and_reads_backward(stub: Stub, stream_name: str) -> None:
    await append(stub, f"{stream_name}-x", [event("A"), event("B")])
    await append(stub, f"{stream_name}-y", [event("B")])
    forward = await stub.ReadAll(
        pb.ReadAllRequest(
            filter=pb.AllFilter(stream_prefixes=[f"{stream_name}-"], event_types=["B"])
        )
    )
    assert [e.stream_name for e in forward.events] == [f"{stream_name}-x", f"{stream_name}-y"]
    assert forward.end_of_log
    backward = await stub.ReadAll(
        pb.ReadAllRequest(backward=True, max_count=2, filter=prefix_filter(f"{stream_name}-"))
    )
    assert [(e.stream_name[-1], e.event_type) for e in backward.events] == [("y", "B"), ("x", "B")]
    assert backward.next_position == backward.events[-1].global_position - 1


async def test_read_stream_backward_from_the_last_event(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, 4)
    page = await stub.ReadStream(
        pb.ReadStreamRequest(stream_name=stream_name, backward=True, from_offset=-1, max_count=3)
    )
    assert [e.offset for e in page.events] == [3, 2, 1]
    assert (page.next_offset, page.end_of_stream) == (0, False)


async def test_subscribe_to_all_sends_history_caught_up_then_live_events(
    stub: Stub, stream_name: str
) -> None:
    first = await append(stub, f"{stream_name}-a", 2)
    sub = Subscriber.open_all(stub, filter=prefix_filter(f"{stream_name}-"))
    try:
        history = await sub.until_caught_up()
        assert [e.global_position for e in history] == [
            first.first_global_position,
            first.last_global_position,
        ]
        assert sub.caught_up[0] > first.last_global_position
        later = await append(stub, f"{stream_name}-b", 2)
        received = await sub.until_events(4)
        assert [e.global_position for e in received[2:]] == [
            later.first_global_position,
            later.last_global_position,
        ]
    finally:
        sub.cancel()


async def test_subscribe_to_all_from_the_end_skips_history(stub: Stub, stream_name: str) -> None:
    await append(stub, f"{stream_name}-a", 2)
    sub = Subscriber.open_all(stub, from_end=True, filter=prefix_filter(f"{stream_name}-"))
    try:
        assert await sub.until_caught_up() == []
        later = await append(stub, f"{stream_name}-a", 1)
        (received,) = await sub.until_events(1)
        assert received.global_position == later.first_global_position
    finally:
        sub.cancel()


async def test_subscribe_to_all_resumes_after_a_consumer_group(
    stub: Stub, stream_name: str
) -> None:
    first = await append(stub, f"{stream_name}-a", 3)
    group = f"{stream_name}-g"
    await stub.CommitOffset(
        pb.CommitOffsetRequest(
            stream_name=ALL, consumer_group=group, offset=first.first_global_position
        )
    )
    sub = Subscriber.open_all(stub, consumer_group=group, filter=prefix_filter(f"{stream_name}-"))
    try:
        history = await sub.until_caught_up()
        assert [e.offset for e in history] == [1, 2]
    finally:
        sub.cancel()


async def test_a_sparse_filter_gets_checkpoints_that_never_run_ahead(
    stub: Stub, stream_name: str
) -> None:
    wanted = await append(stub, f"{stream_name}-w", [event("Wanted")])
    for _ in range(3):
        await append(stub, f"{stream_name}-n", 10)
    sub = Subscriber.open_all(
        stub,
        from_position=wanted.first_global_position,
        checkpoint_interval=5,
        filter=pb.AllFilter(stream_prefixes=[f"{stream_name}-"], event_types=["Wanted"]),
    )
    try:
        await sub.until_caught_up()
        assert [e.event_type for e in sub.events] == ["Wanted"]
        assert sub.checkpoints, "no checkpoint over 30 unmatched positions"
        newest = await stub.ReadAll(pb.ReadAllRequest(backward=True, max_count=1))
        for position, _ in sub.checkpoints:
            assert wanted.first_global_position <= position <= newest.events[0].global_position
        positions = [p for p, _ in sub.checkpoints]
        assert positions == sorted(positions)
    finally:
        sub.cancel()


async def test_consumer_groups_on_all_go_by_the_rules(stub: Stub, stream_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetConsumerOffset(
            pb.GetConsumerOffsetRequest(stream_name=ALL, consumer_group=stream_name)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CommitOffset(
            pb.CommitOffsetRequest(stream_name=ALL, consumer_group=stream_name, offset=2**62)
        )
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_other_names_starting_with_a_dollar_are_invalid(memory_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_stub.CommitOffset(
            pb.CommitOffsetRequest(stream_name="$other", consumer_group="g", offset=0)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)["field"] == "stream_name"

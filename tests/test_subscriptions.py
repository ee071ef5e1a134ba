"""SubscribeToStream: history, one CaughtUp, then live events, on both backends."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from server import subscriptions
from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, server_settings
from tests.subscriber import Subscriber
from tests.support import append, event, events, wait_until

Stub = pb_grpc.EventStreamingStub


def offsets(found: list[pb.Event]) -> list[int]:
    return [e.offset for e in found]


def subscriptions_on(server: RunningServer, name: str) -> list[subscriptions.Subscription]:
    assert server.app.subscriptions is not None
    return [s for s in list(server.app.subscriptions.active) if s.stream_name == name]


def tails_of(server: RunningServer) -> dict[str, subscriptions.Tail]:
    assert server.app.subscriptions is not None
    return server.app.subscriptions.tails


async def test_subscription_from_the_start_sends_history_caught_up_then_live_events(
    stub: Stub, stream_name: str
) -> None:
    # There are no timed re-reads: live events come from the wake-up of the append.
    await append(stub, stream_name, events(5))
    sub = Subscriber.open(stub, stream_name)
    try:
        history = await sub.until_caught_up()
        assert offsets(history) == [0, 1, 2, 3, 4]
        assert sub.caught_up == [5]
        await append(stub, stream_name, events(3))
        assert offsets(await sub.until_events(8)) == list(range(8))
        assert [e.stream_name for e in sub.events] == [stream_name] * 8
    finally:
        sub.cancel()


async def test_subscription_from_an_offset_starts_there(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(10))
    sub = Subscriber.open(stub, stream_name, from_offset=6)
    try:
        assert offsets(await sub.until_caught_up()) == [6, 7, 8, 9]
        assert sub.caught_up == [10]
    finally:
        sub.cancel()


async def test_subscription_from_an_offset_beyond_the_end_waits_for_it(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(2))
    sub = Subscriber.open(stub, stream_name, from_offset=4)
    try:
        assert await sub.until_caught_up() == []
        await append(stub, stream_name, events(4))
        assert offsets(await sub.until_events(2)) == [4, 5]
    finally:
        sub.cancel()


async def test_subscription_from_the_end_gets_only_new_events(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(5))
    sub = Subscriber.open(stub, stream_name, from_end=True)
    try:
        assert await sub.until_caught_up() == []
        assert sub.caught_up == [5]
        await append(stub, stream_name, events(2))
        assert offsets(await sub.until_events(2)) == [5, 6]
    finally:
        sub.cancel()


async def test_subscription_by_consumer_group_resumes_after_its_committed_offset(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(10))
    await stub.CommitOffset(
        pb.CommitOffsetRequest(stream_name=stream_name, consumer_group="projector", offset=3)
    )
    sub = Subscriber.open(stub, stream_name, consumer_group="projector")
    try:
        assert offsets(await sub.until_caught_up()) == list(range(4, 10))
    finally:
        sub.cancel()


async def test_subscription_by_a_group_that_never_committed_starts_at_zero(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(3))
    sub = Subscriber.open(stub, stream_name, consumer_group="fresh")
    try:
        assert offsets(await sub.until_caught_up()) == [0, 1, 2]
    finally:
        sub.cancel()


async def test_consumer_group_resumes_after_a_server_restart(pg_dsn: str, stream_name: str) -> None:
    """PostgreSQL: the committed offset outlives the server that recorded it."""
    first = EventStreamingServer(server_settings("postgres", pg_dsn))
    await first.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await append(stub, stream_name, events(6))
            sub = Subscriber.open(stub, stream_name, consumer_group="billing")
            processed = await sub.until_caught_up()
            await stub.CommitOffset(
                pb.CommitOffsetRequest(
                    stream_name=stream_name, consumer_group="billing", offset=processed[2].offset
                )
            )
            sub.cancel()
    finally:
        await first.stop(grace=1)

    second = EventStreamingServer(server_settings("postgres", pg_dsn))
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await append(stub, stream_name, events(2))
            sub = Subscriber.open(stub, stream_name, consumer_group="billing")
            assert offsets(await sub.until_caught_up()) == [3, 4, 5, 6, 7]
            sub.cancel()
    finally:
        await second.stop(grace=1)


async def test_caught_up_comes_once_and_after_all_history(stub: Stub, stream_name: str) -> None:
    # More history than one page of the subscription's reads.
    history = subscriptions.PAGE_SIZE * 2 + 37
    for start in range(0, history, 500):
        await append(stub, stream_name, events(min(500, history - start)))
    sub = Subscriber.open(stub, stream_name)
    try:
        assert offsets(await sub.until_caught_up(timeout=30)) == list(range(history))
        for _ in range(3):
            await append(stub, stream_name, events(2))
        await sub.until_events(history + 6)
        assert sub.caught_up == [history]
        assert sub.caught_up_after == [history]
        assert offsets(sub.events) == list(range(history + 6))
    finally:
        sub.cancel()


async def test_events_appended_while_history_is_sent_arrive_once_in_order(
    stub: Stub, stream_name: str
) -> None:
    history, live = 3000, 600
    for _ in range(history // 500):
        await append(stub, stream_name, events(500))
    sub = Subscriber.open(stub, stream_name)

    async def write_meanwhile() -> None:
        for _ in range(live // 6):
            await append(stub, stream_name, events(6))

    try:
        writer = asyncio.create_task(write_meanwhile())
        await sub.until_events(history + live, timeout=30)
        await writer
        # CaughtUp may come last, when the subscription found nothing more.
        await sub.until_caught_up()
        assert offsets(sub.events) == list(range(history + live))
        assert len(sub.caught_up) == 1
        assert sub.caught_up_after[0] >= history
        # Nothing beyond what was appended, and no second CaughtUp.
        await append(stub, stream_name, [event("Last")])
        await sub.until_events(history + live + 1)
        assert sub.events[-1].event_type == "Last"
        assert len(sub.caught_up) == 1
    finally:
        sub.cancel()


async def test_subscription_filters_by_event_type(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, [event("A"), event("B"), event("A"), event("C")])
    sub = Subscriber.open(stub, stream_name, event_types=["A", "C"])
    try:
        history = await sub.until_caught_up()
        assert [(e.offset, e.event_type) for e in history] == [(0, "A"), (2, "A"), (3, "C")]
        assert sub.caught_up == [4]
        await append(stub, stream_name, [event("B"), event("C"), event("B"), event("A")])
        live = (await sub.until_events(5))[3:]
        assert [(e.offset, e.event_type) for e in live] == [(5, "C"), (7, "A")]
    finally:
        sub.cancel()


async def test_subscription_filters_by_timestamp(stub: Stub, stream_name: str) -> None:
    await append(stub, stream_name, events(3, "Old"))
    await append(stub, stream_name, events(2, "New"))
    read = await stub.ReadStream(pb.ReadStreamRequest(stream_name=stream_name, from_offset=3))
    since = read.events[0].timestamp
    sub = Subscriber.open(stub, stream_name, from_timestamp=since)
    try:
        assert offsets(await sub.until_caught_up()) == [3, 4]
        await append(stub, stream_name, events(1, "Newer"))
        assert offsets(await sub.until_events(3)) == [3, 4, 5]
    finally:
        sub.cancel()


async def test_slow_subscriber_holds_at_most_one_page_and_still_gets_everything(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await append(stub, stream_name, [event()])
    sub = Subscriber.open(stub, stream_name, from_offset=0)
    await sub.until_caught_up()
    (subscription,) = subscriptions_on(server, stream_name)
    # The client stops reading while thousands of events (more bytes than any
    # transport window) are appended.
    total = 6000
    padding = "x" * 2000
    for start in range(0, total, 500):
        await append(
            stub, stream_name, [event("Big", {"n": start + i, "pad": padding}) for i in range(500)]
        )
    await wait_until(lambda: subscription.position > 1)
    assert subscription.peak_held <= subscriptions.PAGE_SIZE
    # Flow control stopped it well short of the end: the rest stays in storage.
    assert subscription.position < total
    # The stream's shared tail keeps only the newest events, not all 6,000.
    tail = tails_of(server)[stream_name]
    await wait_until(lambda: tail.end == total + 1)
    assert tail.size <= subscriptions.TAIL_EVENTS + subscriptions.PAGE_SIZE
    assert tail.start > subscription.position
    try:
        got = await sub.until_events(total + 1, timeout=60)
        assert offsets(got) == list(range(total + 1))
        assert subscription.peak_held <= subscriptions.PAGE_SIZE
        assert sub.caught_up == [1]
        # It fell behind the tail and was served from storage again.
        assert subscription.storage_reads > 1
    finally:
        sub.cancel()


async def test_subscribers_of_one_stream_share_one_read_per_write(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await append(stub, stream_name, events(2))
    subs = [Subscriber.open(stub, stream_name) for _ in range(5)]
    try:
        for sub in subs:
            await sub.until_caught_up()
        for _ in range(10):
            await append(stub, stream_name, events(5))
        for sub in subs:
            assert offsets(await sub.until_events(52)) == list(range(52))
        tail = tails_of(server)[stream_name]
        assert tail.followers == 5
        # Each read storage once, for its history; the live events came from the tail.
        assert [s.storage_reads for s in subscriptions_on(server, stream_name)] == [1] * 5
    finally:
        for sub in subs:
            sub.cancel()


async def test_subscribers_behind_a_tail_that_began_ahead_get_every_event(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await append(stub, stream_name, events(10))
    # The first live subscriber starts the stream's tail at offset 100, beyond the end.
    ahead = Subscriber.open(stub, stream_name, from_offset=100)
    behind = Subscriber.open(stub, stream_name, from_offset=0)
    try:
        assert await ahead.until_caught_up() == []
        assert offsets(await behind.until_caught_up()) == list(range(10))
        for _ in range(10):
            await append(stub, stream_name, events(10))
        assert offsets(await behind.until_events(110)) == list(range(110))
        assert offsets(await ahead.until_events(10)) == list(range(100, 110))
        # It waited for writes rather than reading storage in a loop.
        reads = {s.position: s.storage_reads for s in subscriptions_on(server, stream_name)}
        assert max(reads.values()) < 40
    finally:
        ahead.cancel()
        behind.cancel()


async def test_cancelled_subscriptions_release_what_they_held(
    server: RunningServer, stream_name: str
) -> None:
    stub = server.stub
    await append(stub, stream_name, events(3))
    subs = [Subscriber.open(stub, stream_name) for _ in range(2)]
    for sub in subs:
        await sub.until_caught_up()
    assert len(subscriptions_on(server, stream_name)) == 2
    assert stream_name in tails_of(server)
    subs[0].cancel()
    await wait_until(lambda: len(subscriptions_on(server, stream_name)) == 1)
    assert tails_of(server)[stream_name].followers == 1
    subs[1].cancel()
    await wait_until(lambda: not subscriptions_on(server, stream_name))
    # The last one stopped the stream's tail.
    assert stream_name not in tails_of(server)


async def test_subscription_to_an_unknown_stream_is_not_found(stub: Stub, stream_name: str) -> None:
    error = await Subscriber.open(stub, stream_name).error()
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert stream_name in (error.details() or "")


async def test_subscription_to_a_queue_fails_precondition(stub: Stub, stream_name: str) -> None:
    await stub.Enqueue(pb.EnqueueRequest(stream_name=stream_name, events=[event()]))
    error = await Subscriber.open(stub, stream_name).error()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("start", "field"),
    [({"from_offset": -1}, "from_offset"), ({"consumer_group": ""}, "consumer_group")],
)
async def test_subscription_names_the_invalid_field(
    memory_stub: Stub, stream_name: str, start: dict[str, object], field: str
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    await append(stub, stream_name, events(1))
    error = await Subscriber.open(stub, stream_name, **start).error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


async def test_subscription_ends_with_not_found_when_its_stream_is_deleted(
    stub: Stub, stream_name: str
) -> None:
    await append(stub, stream_name, events(2))
    sub = Subscriber.open(stub, stream_name)
    await sub.until_caught_up()
    await stub.DeleteStream(pb.DeleteStreamRequest(stream_name=stream_name))
    error = await sub.error()
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_stopping_the_server_ends_its_subscriptions_with_unavailable(
    stream_name: str,
) -> None:
    app = EventStreamingServer(server_settings("memory"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await append(stub, stream_name, events(1))
            sub = Subscriber.open(stub, stream_name)
            await sub.until_caught_up()
            # A long grace period: the subscription must not hold the shutdown for it.
            stopping = asyncio.create_task(app.stop(grace=60))
            error = await sub.error(timeout=20)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (error.details() or "")
            await asyncio.wait_for(stopping, timeout=20)
    finally:
        await app.stop(grace=0)

"""The asyncio client on the global log: AppendToStreams, ReadAll, $all
subscriptions with consumer groups, and the exactly-once helper (both backends)."""

from __future__ import annotations

import pytest

from eventstreaming_client import (
    ALL,
    AsyncClient,
    Client,
    ConsumerCheckpoint,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    WrongExpectedOffset,
)
from eventstreaming_client.errors import CheckpointAlreadyCommitted
from tests.client.proxy import BreakableProxy
from tests.support import unique_name


async def test_append_to_streams_is_atomic_and_names_every_failure(aclient: AsyncClient) -> None:
    a, b = unique_name("a"), unique_name("b")
    results = await aclient.append_to_streams(
        [StreamAppend(a, [NewEvent("E"), NewEvent("E")], -1), StreamAppend(b, [NewEvent("E")])]
    )
    assert [(r.first_offset, r.last_offset) for r in results] == [(0, 1), (0, 0)]
    assert results[1].first_global_position == results[0].last_global_position + 1
    with pytest.raises(WrongExpectedOffset) as caught:
        await aclient.append_to_streams(
            [StreamAppend(a, [NewEvent("E")], 5), StreamAppend(b, [NewEvent("E")], 9)]
        )
    assert caught.value.actual_last_offsets == {a: 1, b: 0}
    assert await aclient.get_stream_length(a) == 2


async def test_read_all_and_backward_reads(aclient: AsyncClient) -> None:
    name = unique_name("all")
    await aclient.append_to_stream(name, [NewEvent("E", {"n": i}) for i in range(5)])
    page = await aclient.read_all(stream_prefixes=[name], max_count=3)
    assert [e.json()["n"] for e in page.events] == [0, 1, 2]
    rest = await aclient.read_all(from_position=page.next_position, stream_prefixes=[name])
    assert [e.json()["n"] for e in rest.events] == [3, 4]
    newest = await aclient.read_all(backward=True, max_count=1, stream_prefixes=[name])
    assert newest.events[0].json() == {"n": 4}
    backward = [e.offset async for e in aclient.iter_stream(name, from_offset=-1, backward=True)]
    assert backward == [4, 3, 2, 1, 0]


async def test_a_consumer_group_on_all_resumes_after_its_commit(aclient: AsyncClient) -> None:
    name, group = unique_name("grp"), unique_name("g")
    await aclient.append_to_stream(name, [NewEvent("E", {"n": i}) for i in range(4)])
    first = aclient.subscribe(ALL, consumer_group=group, stream_prefixes=[name])
    async with first:
        async for event in first:
            if event.json()["n"] == 1:
                await first.commit()
                break
    second = aclient.subscribe(
        ALL, consumer_group=group, stream_prefixes=[name], until_caught_up=True
    )
    assert [e.json()["n"] async for e in second] == [2, 3]


async def test_exactly_once_writes_each_output_once(aclient: AsyncClient) -> None:
    source, totals, group = unique_name("orders"), unique_name("totals"), unique_name("p")
    await aclient.append_to_stream(source, [NewEvent("Placed", {"n": i}) for i in range(5)])

    async def project(event: RecordedEvent) -> list[StreamAppend]:
        return [StreamAppend(totals, [NewEvent("Counted", {"from": event.offset})])]

    processed = await aclient.process_exactly_once(source, group, project, until_caught_up=True)
    assert processed == 5
    # Run again: nothing left; a stale replay of an input is refused by the checkpoint.
    again = await aclient.process_exactly_once(source, group, project, until_caught_up=True)
    assert again == 0
    with pytest.raises(CheckpointAlreadyCommitted) as caught:
        await aclient.append_to_streams(
            [StreamAppend(totals, [NewEvent("Counted")])],
            checkpoint=ConsumerCheckpoint(source, group, 2),
        )
    assert caught.value.committed_offset == 4
    outputs = [e.json()["from"] async for e in aclient.iter_stream(totals)]
    assert outputs == [0, 1, 2, 3, 4]


def test_exactly_once_survives_a_lost_answer(client: Client) -> None:
    """The answer of a checkpointed append is lost: the retry writes nothing twice."""
    source, out, group = unique_name("in"), unique_name("out"), unique_name("p")
    client.append_to_stream(source, [NewEvent("In", {"n": i}) for i in range(3)])
    port = int(client.options.address.rsplit(":", 1)[1])
    proxy = BreakableProxy(port)
    try:
        with Client(proxy.address) as through:
            through.get_stream_length(source)
            proxy.drop_next_reply()
            done = through.process_exactly_once(
                source,
                group,
                lambda e: [StreamAppend(out, [NewEvent("Out", {"n": e.json()["n"]})])],
                until_caught_up=True,
            )
    finally:
        proxy.close()
    assert proxy.drops >= 1
    assert done in (2, 3)  # the retried first call may answer "already committed"
    assert [e.json()["n"] for e in client.iter_stream(out)] == [0, 1, 2]
    assert client.get_consumer_offset(source, group) == 2

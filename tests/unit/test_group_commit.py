"""How group commit forms its groups: a lone call goes at once, calls pile up only
behind writes in flight, groups keep their bounds, and a call never goes while a
group in flight touches one of its streams or its checkpoint (so calls on one
stream are written in the order submitted)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from storage.postgres.group_commit import Call, GroupCommit
from storage.records import AppendResult, ConsumerCheckpoint, StreamAppend
from tests.contract.events import new_events


def append(stream: str, count: int = 1) -> list[StreamAppend]:
    return [StreamAppend(stream, new_events(count))]


class Writes:
    """A write function that holds each group until released."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.in_flight: list[tuple[list[str], asyncio.Event]] = []
        #: Streams a group shared with a group already in flight.
        self.overlaps: list[set[str]] = []

    async def __call__(self, calls: Sequence[Call]) -> None:
        names = [",".join(a.stream_name for a in c.appends) for c in calls]
        streams = {a.stream_name for c in calls for a in c.appends}
        busy = {s for group, _ in self.in_flight for n in group for s in n.split(",")}
        if streams & busy:
            self.overlaps.append(streams & busy)
        gate = asyncio.Event()
        self.groups.append(names)
        self.in_flight.append((names, gate))
        await gate.wait()
        self.in_flight.remove((names, gate))
        for call in calls:
            call.done.set_result((AppendResult(0, 0, 0, 0),))

    async def release_all(self) -> None:
        while self.in_flight:
            for _, gate in list(self.in_flight):
                gate.set()
            await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_call_goes_at_once() -> None:
    writes = Writes()
    commit = GroupCommit(writes)
    call = asyncio.create_task(commit.submit(append("a"), None))
    await settle()
    assert writes.groups == [["a"]]
    await writes.release_all()
    await call


async def test_calls_pile_up_behind_the_writes_in_flight() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=1)
    calls = [asyncio.create_task(commit.submit(append(f"s{i}"), None)) for i in range(5)]
    await settle()
    assert writes.groups == [["s0"]]
    await writes.release_all()
    await settle()
    assert writes.groups == [["s0"], ["s1", "s2", "s3", "s4"]]
    await writes.release_all()
    await asyncio.gather(*calls)


async def test_a_group_keeps_its_bound_of_events() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=1, max_events=3)
    calls = [asyncio.create_task(commit.submit(append(f"s{i}", 2), None)) for i in range(4)]
    await settle()
    while len(writes.groups) < 4:
        await writes.release_all()
        await settle()
    # Two events a call, at most three a group: each call alone.
    assert writes.groups == [["s0"], ["s1"], ["s2"], ["s3"]]
    await writes.release_all()
    await asyncio.gather(*calls)


async def test_a_call_waits_while_a_group_in_flight_touches_its_stream() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=2)
    first = asyncio.create_task(commit.submit(append("hot"), None))
    await settle()
    later = [
        asyncio.create_task(commit.submit(append(name), None))
        for name in ("hot", "cold", "hot", "other")
    ]
    await settle()
    # The second slot takes what does not touch "hot"; the "hot" calls wait.
    assert writes.groups == [["hot"], ["cold"]]
    await writes.release_all()
    await settle()
    assert writes.groups[2:] == [["hot", "hot", "other"]]
    assert writes.overlaps == []
    await writes.release_all()
    await asyncio.gather(first, *later)


async def test_calls_behind_a_held_call_on_any_of_its_streams_wait_too() -> None:
    """A call on (hot, x) is held behind hot; a later call on x alone waits
    behind it, or x's calls would be written out of order."""
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=2)
    first = asyncio.create_task(commit.submit(append("hot"), None))
    await settle()
    both = asyncio.create_task(commit.submit([*append("hot"), *append("x")], None))
    x_alone = asyncio.create_task(commit.submit(append("x"), None))
    await settle()
    assert writes.groups == [["hot"]]
    await writes.release_all()
    await settle()
    assert writes.groups[1] == ["hot,x", "x"]
    await writes.release_all()
    await asyncio.gather(first, both, x_alone)


async def test_checkpoints_of_one_group_wait_for_each_other() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=2)
    checkpoint = ConsumerCheckpoint("in", "g", 1)
    first = asyncio.create_task(commit.submit(append("a"), checkpoint))
    await settle()
    second = asyncio.create_task(commit.submit(append("b"), ConsumerCheckpoint("in", "g", 2)))
    other_group = asyncio.create_task(commit.submit(append("c"), ConsumerCheckpoint("in", "h", 1)))
    await settle()
    assert writes.groups == [["a"], ["c"]]
    await writes.release_all()
    await settle()
    assert writes.groups[2] == ["b"]
    await writes.release_all()
    await asyncio.gather(first, second, other_group)


async def test_no_two_groups_in_flight_ever_share_a_stream() -> None:
    writes = Writes()
    commit = GroupCommit(writes, max_in_flight=2)
    names = [f"s{i % 3}" for i in range(60)]
    calls = []
    for i, name in enumerate(names):
        calls.append(asyncio.create_task(commit.submit(append(name), None)))
        if i % 7 == 0:
            await settle()
            if writes.in_flight:
                writes.in_flight[0][1].set()
    while not all(c.done() for c in calls):
        await writes.release_all()
        await settle()
    written = [name for group in writes.groups for name in group]
    assert sorted(written) == sorted(names)
    assert len(writes.groups) > 3
    assert writes.overlaps == []

"""Appends made at the same time (written together on PostgreSQL: group commit)
each succeed or fail on their own: good appends, stale expectations, duplicates,
wrong types and refused checkpoints side by side, each answered as if alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from storage.errors import (
    CheckpointExists,
    DuplicateEvent,
    WrongExpectedOffset,
    WrongExpectedOffsets,
    WrongStreamType,
)
from storage.interface import EventStore
from storage.records import ConsumerCheckpoint, StreamAppend
from tests.contract.events import new_event, new_events


async def outcome(call: Any) -> Any:
    try:
        return await call
    except Exception as exc:
        return exc


async def test_a_group_answers_each_call_as_if_it_were_alone(
    store: EventStore, stream_name: str
) -> None:
    known = new_event()
    await store.append_to_stream(f"{stream_name}-dup", [known])
    await store.enqueue(f"{stream_name}-queue", new_events(1))
    await store.append_to_stream(f"{stream_name}-in", new_events(2))
    await store.commit_offset(f"{stream_name}-in", "g", 1)
    calls = {
        "good": store.append_to_stream(f"{stream_name}-a", new_events(2)),
        "stale": store.append_to_stream(f"{stream_name}-dup", new_events(1), 5),
        "duplicate": store.append_to_stream(f"{stream_name}-dup", [known, new_event()]),
        "wrong type": store.append_to_stream(f"{stream_name}-queue", new_events(1)),
        "good too": store.append_to_stream(f"{stream_name}-b", new_events(3)),
        "several stale": store.append_to_streams(
            [
                StreamAppend(f"{stream_name}-c", new_events(1), 3),
                StreamAppend(f"{stream_name}-d", new_events(1)),
            ]
        ),
        "checkpoint done": store.append_to_streams(
            [StreamAppend(f"{stream_name}-out", new_events(1))],
            ConsumerCheckpoint(f"{stream_name}-in", "g", 1),
        ),
        "same stream, after good": store.append_to_stream(f"{stream_name}-a", new_events(1)),
    }
    answers = dict(
        zip(calls, await asyncio.gather(*(outcome(c) for c in calls.values())), strict=True)
    )
    assert (answers["good"].first_offset, answers["good"].last_offset) == (0, 1)
    assert isinstance(answers["stale"], WrongExpectedOffset)
    assert answers["stale"].actual == 0
    assert isinstance(answers["duplicate"], DuplicateEvent)
    assert isinstance(answers["wrong type"], WrongStreamType)
    assert (answers["good too"].first_offset, answers["good too"].last_offset) == (0, 2)
    assert isinstance(answers["several stale"], WrongExpectedOffsets)
    assert isinstance(answers["checkpoint done"], CheckpointExists)
    assert answers["same stream, after good"].first_offset == 2
    # Nothing of the refused calls was written, all of the others was.
    assert await store.get_stream_length(f"{stream_name}-dup") == 1
    assert await store.get_stream_length(f"{stream_name}-a") == 3
    for refused in ("c", "d", "out"):
        with pytest.raises(Exception, match="does not exist"):
            await store.get_stream_length(f"{stream_name}-{refused}")
    # The global positions of the written calls are dense and theirs alone.
    written = [answers[k] for k in ("good", "good too", "same stream, after good")]
    taken = sorted(
        p for r in written for p in range(r.first_global_position, r.last_global_position + 1)
    )
    assert len(set(taken)) == len(taken) == 6


async def test_appends_arriving_together_are_written_in_fewer_transactions(
    store: EventStore, stream_name: str
) -> None:
    commits = getattr(store, "_appends", None)
    results = await asyncio.gather(
        *(store.append_to_stream(f"{stream_name}-{i % 5}", new_events(1)) for i in range(60))
    )
    taken = sorted(r.first_global_position for r in results)
    assert taken == list(range(taken[0], taken[0] + 60))
    if commits is None:
        pytest.skip("this backend writes each append on its own (no transactions to group)")
    groups_before, calls_before = commits.groups, commits.calls
    await asyncio.gather(
        *(store.append_to_stream(f"{stream_name}-{i % 5}", new_events(1)) for i in range(60))
    )
    assert commits.calls - calls_before == 60
    assert commits.groups - groups_before < 60


async def test_a_group_of_good_calls_with_one_repeat_and_one_duplicate_answers_each(
    store: EventStore, stream_name: str
) -> None:
    """Calls that would all go in as asked but for a stored id: the repeat answers
    its first results, the duplicate fails alone, the rest are written."""
    first = [new_event(), new_event()]
    original = await store.append_to_stream(f"{stream_name}-r", first)
    known = new_event()
    await store.append_to_stream(f"{stream_name}-d", [known])
    calls = [store.append_to_stream(f"{stream_name}-{i % 3}", new_events(2)) for i in range(12)]
    calls.insert(5, store.append_to_stream(f"{stream_name}-r", first))
    calls.insert(9, store.append_to_stream(f"{stream_name}-d", [new_event(), known]))
    answers = await asyncio.gather(*(outcome(c) for c in calls))
    assert answers[5] == original
    assert isinstance(answers[9], DuplicateEvent)
    good = [a for i, a in enumerate(answers) if i not in (5, 9)]
    assert all(not isinstance(a, Exception) for a in good)
    for i in range(3):
        assert await store.get_stream_length(f"{stream_name}-{i}") == 8
    assert await store.get_stream_length(f"{stream_name}-r") == 2
    assert await store.get_stream_length(f"{stream_name}-d") == 1
    positions = sorted(
        p for a in good for p in range(a.first_global_position, a.last_global_position + 1)
    )
    assert positions == list(range(positions[0], positions[0] + 24))


async def test_a_group_of_calls_expecting_each_others_offsets_goes_in_whole(
    store: EventStore, stream_name: str
) -> None:
    """Each call expects the offset the one before it leaves, in one group: all
    are written, in order, with dense positions."""
    calls = [
        store.append_to_streams(
            [
                StreamAppend(f"{stream_name}-a", new_events(2), 2 * i - 1),
                StreamAppend(f"{stream_name}-b-{i}", new_events(1), -1),
            ]
        )
        for i in range(20)
    ]
    answers = await asyncio.gather(*calls)
    assert [a[0].first_offset for a in answers] == [2 * i for i in range(20)]
    positions = [
        p for a in answers for r in a for p in (r.first_global_position, r.last_global_position)
    ]
    assert positions == sorted(positions)
    assert await store.get_stream_length(f"{stream_name}-a") == 40

"""Idle waiters cost next to nothing: hundreds of subscriptions and long polls on
separate streams, with nothing written, make no storage reads of their own. They
wake from notifications; the only look while idle is the notifier's one watch query
per interval for all waited streams together (PostgreSQL), none at all in memory."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import BACKENDS, RunningServer, server_settings, start_server
from tests.subscriber import Subscriber
from tests.support import append, unique_name, wait_until

SUBSCRIPTIONS = 150
LONG_POLLS = 100
#: The idle stretch watched: several watch intervals (1 s) long.
IDLE_SECONDS = 3.0


@pytest_asyncio.fixture(params=BACKENDS)
async def counted(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningServer, collections.Counter[str]]]:
    """A server of its own whose store counts every storage call it gets."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""
    # No retention pass (which does read storage) falls into the stretch watched.
    settings = server_settings(request.param, dsn, retention_interval_seconds=3600)
    running = await start_server(settings, request.param)
    calls: collections.Counter[str] = collections.Counter()
    store = running.store
    for name in ("read_stream", "dequeue", "get_stream_length", "get_stream_metadata"):
        original = getattr(store, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(store, name, counting)
    if request.param == "postgres":
        db = store.db  # type: ignore[attr-defined]
        for name in ("fetch", "fetchrow", "fetchval", "execute"):
            original = getattr(db, name)

            def statement(*args: Any, _original: Any = original, **kw: Any) -> Any:
                calls["statements"] += 1
                return _original(*args, **kw)

            monkeypatch.setattr(db, name, statement)
    try:
        yield running, calls
    finally:
        await running.close()


async def test_idle_subscriptions_and_long_polls_make_no_reads_of_their_own(
    counted: tuple[RunningServer, collections.Counter[str]],
) -> None:
    running, calls = counted
    stub, store = running.stub, running.store
    logs = [unique_name("idle-log") for _ in range(SUBSCRIPTIONS)]
    queues = [unique_name("idle-queue") for _ in range(LONG_POLLS)]
    for name in logs:
        await append(stub, name)
    subscribers = [Subscriber.open(stub, name) for name in logs]
    polls: list[asyncio.Future[Any]] = []
    try:
        for sub in subscribers:
            await sub.until_caught_up()
        for name in queues:
            request = pb.DequeueRequest(stream_name=name, consumer_id="idle")
            request.wait_time.FromSeconds(20)
            polls.append(asyncio.ensure_future(stub.Dequeue(request, timeout=60)))
        waited = set(logs) | set(queues)
        await wait_until(lambda: waited <= set(store.signals.waited()), timeout=30)

        before = calls.copy()
        notifier = getattr(store, "_notifier", None)
        watches_before = notifier.watches if notifier is not None else 0
        await asyncio.sleep(IDLE_SECONDS)  # the stretch being measured
        idle = calls - before
        watches = (notifier.watches if notifier is not None else 0) - watches_before

        # No waiter looked at storage on its own: no read, no dequeue, no statement
        # at all on the pool. (Before, each tail re-read every second and each long
        # poll every half second: about 350 reads a second here.)
        assert idle == collections.Counter(), dict(idle)
        # The one look for lost notifications: one query per interval for all.
        assert watches <= IDLE_SECONDS + 1

        # And they are all still live: a write wakes its waiter at once.
        await append(stub, logs[0])
        await subscribers[0].until_events(2)
        await stub.Enqueue(
            pb.EnqueueRequest(
                stream_name=queues[0], events=[pb.EventData(event_type="T", data=b"{}")]
            )
        )
        reply = await asyncio.wait_for(polls[0], 15)
        assert len(reply.messages) == 1
    finally:
        for sub in subscribers:
            sub.cancel()
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

"""The asyncio client's AppendSession (both backends): pipelined appends to one
stream apply in order, a failure is raised by its own append only, and a session
the server ends fails what is still waiting with Unavailable."""

from __future__ import annotations

import asyncio

import pytest

from eventstreaming_client import AsyncClient, NewEvent, StreamAppend, WrongExpectedOffset
from eventstreaming_client.errors import Unavailable
from tests.conftest import server_settings, start_server
from tests.support import unique_name


async def test_pipelined_appends_to_one_stream_apply_in_order(aclient: AsyncClient) -> None:
    name = unique_name("session")
    async with aclient.append_session() as session:
        results = await asyncio.gather(
            *(
                session.append_to_stream(
                    name, [NewEvent("E", {"n": i})], expected_last_offset=i - 1
                )
                for i in range(200)
            )
        )
    assert [r.first_offset for r in results] == list(range(200))
    assert await aclient.get_stream_length(name) == 200


async def test_a_failed_append_raises_alone(aclient: AsyncClient) -> None:
    name = unique_name("session")
    async with aclient.append_session() as session:
        first = await session.append_to_stream(name, [NewEvent("E")])
        stale = session.append_to_stream(name, [NewEvent("E")], expected_last_offset=7)
        good = session.append_to_streams([StreamAppend(name, [NewEvent("E")], 0)])
        answers = await asyncio.gather(stale, good, return_exceptions=True)
    assert first.first_offset == 0
    assert isinstance(answers[0], WrongExpectedOffset)
    assert answers[0].actual_last_offset in (0, 1)
    assert not isinstance(answers[1], BaseException)
    assert answers[1][0].first_offset == 1


async def test_a_session_the_server_ends_fails_what_is_waiting_with_unavailable() -> None:
    running = await start_server(server_settings("memory"), "memory")
    try:
        async with AsyncClient(running.address) as client:
            session = client.append_session()
            await session.append_to_stream(unique_name("s"), [NewEvent("E")])
            await running.app.stop(grace=5)
            with pytest.raises(Unavailable):
                await session.append_to_stream(unique_name("s"), [NewEvent("E")])
            await session.close()
    finally:
        await running.close()

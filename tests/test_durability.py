"""PostgreSQL: what was acknowledged survives restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import ServerProcess, event, events, read_all, unique_name, wait_until


def pg_env(dsn: str) -> dict[str, str]:
    return {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": dsn}


async def read_everything(address: str, name: str) -> list[pb.Event]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await read_all(pb_grpc.EventStreamingStub(channel), name, max_count=1000)


async def test_events_survive_a_server_restart(pg_dsn: str, tmp_path: Path) -> None:
    name = unique_name("restart")
    server = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "first.log")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=name, events=events(7)))
    finally:
        assert await server.terminate() == 0
    again = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "second.log")
    try:
        stored = await read_everything(again.address, name)
    finally:
        await again.terminate()
    assert [json.loads(e.data)["n"] for e in stored] == list(range(7))


async def test_sigkill_mid_load_keeps_every_acknowledged_append(
    pg_dsn: str, tmp_path: Path
) -> None:
    name = unique_name("sigkill")
    server = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "killed.log")
    acknowledged: dict[str, tuple[int, int]] = {}
    stop = asyncio.Event()

    async def writer(w: int, stub: pb_grpc.EventStreamingStub) -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            tag = f"w{w}-{i}"
            try:
                reply = await stub.AppendToStream(
                    pb.AppendToStreamRequest(
                        stream_name=name,
                        events=[event("K", {"tag": tag}), event("K", {"tag": tag})],
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                return  # the server died under us: this append was not acknowledged
            acknowledged[tag] = (reply.first_offset, reply.last_offset)
            i += 1

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        writers = [asyncio.create_task(writer(w, stub)) for w in range(10)]
        await wait_until(lambda: len(acknowledged) >= 200, timeout=60)
        server.kill()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*writers)

    restarted = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "restarted.log")
    try:
        stored = await read_everything(restarted.address, name)
    finally:
        await restarted.terminate()
    assert [e.offset for e in stored] == list(range(len(stored)))
    by_offset = {e.offset: json.loads(e.data)["tag"] for e in stored}
    assert len(acknowledged) >= 200
    for tag, (first, last) in acknowledged.items():
        assert by_offset.get(first) == tag, f"lost {tag}"
        assert by_offset.get(last) == tag, f"lost {tag}"


async def test_sigkill_right_after_session_answers_keeps_every_answered_append(
    pg_dsn: str, tmp_path: Path
) -> None:
    """AppendSession answers come only after commit: a server killed while four
    sessions pipeline appends (written together by group commit) keeps every
    append it answered."""
    name = unique_name("session-kill")
    server = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "killed.log")
    answered: dict[str, tuple[str, int]] = {}

    async def session(s: int, stub: pb_grpc.EventStreamingStub) -> None:
        call = stub.AppendSession()
        tags: dict[int, tuple[str, str]] = {}

        async def write() -> None:
            for i in range(5000):
                tag = f"s{s}-{i}"
                stream = f"{name}-{s % 2}"
                tags[i] = (tag, stream)
                request = pb.AppendToStreamsRequest(
                    appends=[pb.StreamAppend(stream_name=stream, events=[event("K", {"tag": tag})])]
                )
                await call.write(pb.AppendSessionRequest(request_id=i, request=request))

        writer = asyncio.create_task(write())
        try:
            async for answer in call:
                assert answer.WhichOneof("outcome") == "result", answer.error.message
                tag, stream = tags[answer.request_id]
                answered[tag] = (stream, answer.result.results[0].first_offset)
        except grpc.aio.AioRpcError:
            pass  # the server died under us
        finally:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        sessions = [asyncio.create_task(session(s, stub)) for s in range(4)]
        await wait_until(lambda: len(answered) >= 300, timeout=60)
        server.kill()
        with contextlib.suppress(Exception):
            await asyncio.gather(*sessions)

    restarted = await ServerProcess.start(pg_env(pg_dsn), tmp_path / "restarted.log")
    try:
        stored = {
            stream: {
                e.offset: json.loads(e.data)["tag"]
                for e in await read_everything(restarted.address, stream)
            }
            for stream in (f"{name}-0", f"{name}-1")
        }
    finally:
        await restarted.terminate()
    assert len(answered) >= 300
    for tag, (stream, offset) in answered.items():
        assert stored[stream].get(offset) == tag, f"lost {tag}"

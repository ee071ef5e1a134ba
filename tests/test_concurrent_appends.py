"""PostgreSQL: many writers on several server processes share one gapless log."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.support import ServerProcess, event, read_all, unique_name

PROCESSES = 3
WRITERS_PER_PROCESS = 10
APPENDS_PER_WRITER = 15


async def test_writers_on_three_processes_get_gapless_contiguous_offsets(
    pg_dsn: str, tmp_path: Path
) -> None:
    env = {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": pg_dsn}
    servers = await asyncio.gather(
        *(ServerProcess.start(env, tmp_path / f"server{i}.log") for i in range(PROCESSES))
    )
    name = unique_name("concurrent")
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    # writer -> list of (first_offset, last_offset, batch payload tags)
    results: dict[str, list[tuple[int, int, list[str]]]] = {}

    async def writer(tag: str, stub: pb_grpc.EventStreamingStub) -> None:
        rng = random.Random(tag)
        done = results.setdefault(tag, [])
        for i in range(APPENDS_PER_WRITER):
            tags = [f"{tag}/{i}/{j}" for j in range(rng.randint(1, 5))]
            reply = await stub.AppendToStream(
                pb.AppendToStreamRequest(
                    stream_name=name, events=[event("W", {"tag": t}) for t in tags]
                )
            )
            done.append((reply.first_offset, reply.last_offset, tags))

    try:
        await asyncio.gather(
            *(
                writer(f"p{p}w{w}", pb_grpc.EventStreamingStub(channels[p]))
                for p in range(PROCESSES)
                for w in range(WRITERS_PER_PROCESS)
            )
        )
        stored = await read_all(pb_grpc.EventStreamingStub(channels[0]), name, max_count=1000)
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.terminate()

    total = sum(len(tags) for batches in results.values() for _, _, tags in batches)
    assert [e.offset for e in stored] == list(range(total)), "offsets are not 0..N-1 exactly once"
    tag_at = {e.offset: json.loads(e.data)["tag"] for e in stored}
    for batches in results.values():
        for first, last, tags in batches:
            assert last - first + 1 == len(tags)
            assert [tag_at[o] for o in range(first, last + 1)] == tags, "batch not contiguous"

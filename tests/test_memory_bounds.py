"""The server's memory stays bounded whatever the payload sizes and client
behaviour: megabyte events read by concurrent pages of 1,000 and followed by
subscribers that never read. Every response carrying events stops at
EVENTSTREAMING_PAGE_BYTES, and a subscriber that does not read holds one page and
fetches nothing more, so the peak stays far below what the events add up to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.support import ServerProcess, stub_for, unique_name

MIB = 1024 * 1024
EVENTS = 40
#: Pages of 1,000 events of a megabyte each, three at a time, would need 3 GiB;
#: subscribers' history pages of 500, 2 GiB. The documented bound of the README
#: (a few times PAGE_BYTES per call in progress, over the process's own ~100 MiB).
PEAK_RSS_BOUND = 400 * MIB
READERS = 3
SUBSCRIBERS = 4


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


async def test_large_events_keep_the_server_within_its_memory_bound(
    pg_dsn: str, tmp_path: Path
) -> None:
    server = await ServerProcess.start(
        {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": pg_dsn},
        tmp_path / "server.log",
    )
    name = unique_name("big")
    payload = b"\x01" * MIB
    options = [
        ("grpc.max_send_message_length", 8 * MIB),
        ("grpc.max_receive_message_length", 8 * MIB),
    ]
    try:
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            stub = stub_for(channel)
            for _ in range(EVENTS // 2):
                await stub.AppendToStream(
                    pb.AppendToStreamRequest(
                        stream_name=name,
                        events=[
                            pb.EventData(
                                event_type="Big", data=payload, content_type="application/x-big"
                            )
                            for _ in range(2)
                        ],
                    )
                )
            # Subscribers that never read: each call is open once the server has
            # started writing to it (its headers arrived), and is then left alone.
            subscribers = [
                stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_name=name))
                for _ in range(SUBSCRIBERS)
            ]
            for call in subscribers:
                await asyncio.wait_for(call.initial_metadata(), 30)

            async def read_everything() -> int:
                seen, offset = 0, 0
                while True:
                    reply = await stub.ReadStream(
                        pb.ReadStreamRequest(stream_name=name, from_offset=offset, max_count=1000)
                    )
                    seen += len(reply.events)
                    offset = reply.next_offset
                    if reply.end_of_stream:
                        return seen

            for _ in range(3):
                counts = await asyncio.gather(*(read_everything() for _ in range(READERS)))
                assert counts == [EVENTS] * READERS
            peak = _peak_rss(server.process.pid)
            for call in subscribers:
                call.cancel()
        assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"
    finally:
        await server.terminate()

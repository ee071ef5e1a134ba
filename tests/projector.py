"""An exactly-once projection, run as a process the tests kill at random points.

    python -m tests.projector ADDRESS GROUP INPUT_PREFIX OUTPUT_STREAM SEED

It follows the global log from its consumer group's committed position (only the
streams under INPUT_PREFIX), and for each input writes one derived event to
OUTPUT_STREAM with the input's position as the group's checkpoint, in one
AppendToStreams call. An input processed before (the checkpoint is already there)
is ALREADY_EXISTS: skipped. Random pauses before and after each write give a kill
every chance to land before, during or after one.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

import grpc

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc


async def project(address: str, group: str, prefix: str, output: str, seed: int) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStreamingStub(channel)
        request = pb.SubscribeToAllRequest(
            consumer_group=group, filter=pb.AllFilter(stream_prefixes=[prefix])
        )
        async for item in stub.SubscribeToAll(request):
            if not item.HasField("event"):
                continue
            position = item.event.global_position
            await asyncio.sleep(rng.random() * 0.004)
            derived = pb.EventData(
                event_type="Projected", data=json.dumps({"input": position}).encode()
            )
            write = pb.AppendToStreamsRequest(
                appends=[pb.StreamAppend(stream_name=output, events=[derived])],
                checkpoint=pb.ConsumerCheckpoint(
                    stream_name="$all", consumer_group=group, offset=position
                ),
            )
            try:
                await stub.AppendToStreams(write)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            await asyncio.sleep(rng.random() * 0.004)


if __name__ == "__main__":
    address, group, prefix, output, seed = sys.argv[1:6]
    asyncio.run(project(address, group, prefix, output, int(seed)))

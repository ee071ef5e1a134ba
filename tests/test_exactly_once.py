"""Exactly-once processing over the global log, on both backends: a projection that
writes each input's output together with its checkpoint (AppendToStreams), killed
with SIGKILL at random points and restarted, ends with every input applied exactly
once, however many times it was delivered."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.conftest import RunningServer
from tests.support import ROOT, append, event, read_all, unique_name, wait_until

INPUTS = 120
KILLS = 12


def start_projector(
    address: str, group: str, prefix: str, output: str, seed: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.projector", address, group, prefix, output, str(seed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_projection_killed_at_random_points_applies_each_input_once(
    server: RunningServer,
) -> None:
    stub = server.stub
    prefix = unique_name("input")
    output, group = f"projected-{prefix}", f"projector-{prefix}"
    rng = random.Random(11)
    positions: list[int] = []

    async def write_inputs(count: int) -> None:
        for _ in range(count):
            reply = await append(stub, f"{prefix}-{rng.randrange(3)}", [event("Input")])
            positions.append(reply.first_global_position)

    await write_inputs(INPUTS // 2)
    projector = start_projector(server.address, group, f"{prefix}-", output, 0)
    try:
        writing = asyncio.create_task(write_inputs(INPUTS - INPUTS // 2))
        for kill in range(KILLS):
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            projector.kill()
            projector.wait(timeout=10)
            projector = start_projector(server.address, group, f"{prefix}-", output, kill + 1)
        await writing

        async def done() -> bool:
            reply = await stub.GetConsumerOffset(
                pb.GetConsumerOffsetRequest(stream_name="$all", consumer_group=group)
            )
            return reply.offset >= max(positions)

        await wait_until(done, timeout=60)
    finally:
        projector.kill()
        projector.wait(timeout=10)

    outputs = [json.loads(e.data)["input"] for e in await read_all(stub, output)]
    assert sorted(outputs) == sorted(positions), "an input applied twice, or not at all"
    assert outputs == sorted(outputs), "inputs applied out of order"

"""The Node.js client (scripts/node-client), built from the proto file alone,
talks to a live server on each backend: appends, reads, a queue round trip."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

import grpc
import pytest

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, server_settings
from tests.support import ROOT

CLIENT_DIR = ROOT / "scripts" / "node-client"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="Node.js is not installed (node not on PATH)"),
    pytest.mark.skipif(
        not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="the Node.js client's packages are not installed: "
        "run 'npm ci' in scripts/node-client",
    ),
]


async def run_client(address: str, *args: str, **env: str) -> tuple[int, str, str]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(CLIENT_DIR / "client.js"),
        address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def summary(stdout: str) -> dict[str, Any]:
    last = stdout.strip().splitlines()[-1]
    parsed = json.loads(last)
    assert isinstance(parsed, dict)
    return parsed


async def test_node_client_appends_reads_and_round_trips_a_queue(server: RunningServer) -> None:
    code, out, err = await run_client(server.address, "--keep")
    assert code == 0, out + err
    result = summary(out)
    assert result["ok"] is True
    assert result["read"] == [0, 1, 2]
    # What the client wrote is there, as the Python client sees it.
    stub = server.stub
    try:
        read = await stub.ReadStream(pb.ReadStreamRequest(stream_name=result["stream"]))
        assert [e.event_type for e in read.events] == ["NodeClientTested"] * 3
        assert [json.loads(e.data) for e in read.events] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(dict(e.metadata) == {"client": "node"} for e in read.events)
        queue = await stub.GetStreamMetadata(
            pb.GetStreamMetadataRequest(stream_name=result["queue"])
        )
        assert queue.stream_type == pb.STREAM_TYPE_EPHEMERAL
        assert queue.length == 1
        assert queue.pending_count + queue.in_flight_count == 0
    finally:
        for name in (result["stream"], result["queue"]):
            await stub.DeleteStream(pb.DeleteStreamRequest(stream_name=name))


async def test_node_client_sends_a_bearer_token() -> None:
    app = EventStreamingServer(server_settings("memory", auth_tokens="node-token"))
    await app.start()
    try:
        address = f"127.0.0.1:{app.port}"
        code, out, err = await run_client(address)
        assert code == 1
        assert "UNAUTHENTICATED" in err
        code, out, err = await run_client(address, EVENTSTREAMING_TOKEN="node-token")
        assert code == 0, out + err
        assert summary(out)["ok"] is True
        # Without --keep the client cleans up after itself.
        async with grpc.aio.insecure_channel(address) as channel:
            listed = await pb_grpc.EventStreamingStub(channel).ListStreams(
                pb.ListStreamsRequest(prefix="node-"),
                metadata=(("authorization", "Bearer node-token"),),
            )
        assert list(listed.streams) == []
    finally:
        await app.stop(grace=0)

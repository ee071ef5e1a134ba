"""scripts/smoke.sh: passes against a real server on each backend, checks the
answers' content (not only grpcurl's exit code), and reports failures."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from grpc_reflection.v1alpha import reflection

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import RunningServer
from tests.support import ROOT, free_port

SCRIPT = ROOT / "scripts" / "smoke.sh"
SERVICE = pb.DESCRIPTOR.services_by_name["EventStreaming"]
RESULT_LINE = re.compile(r"^(?:\x1b\[\d+m)?(PASS|FAIL)(?:\x1b\[0m)? ", re.MULTILINE)


async def run_smoke(address: str, *, timeout: float = 120) -> tuple[int, str]:
    """Run the script (without blocking the loop the in-process server runs on)."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": ""},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_smoke_script_passes_against_the_server(server: RunningServer) -> None:
    code, output = await run_smoke(server.address)
    assert code == 0, output
    results = RESULT_LINE.findall(output)
    assert results, output
    assert set(results) == {"PASS"}, output
    # Every RPC of the service was exercised.
    for method in SERVICE.methods:
        assert method.name in output, f"{method.name} not exercised:\n{output}"
    assert f"all {len(results)} checks passed" in output
    assert "\x1b[" not in output, "no colours when stdout is not a terminal"


def _empty_answers() -> Any:
    """A servicer answering every RPC with an empty (default) response."""

    def unary(output: type[Any]) -> Any:
        async def method(self: Any, request: Any, context: Any) -> Any:
            return output()

        return method

    async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        for _ in ():
            yield None

    methods: dict[str, Any] = {}
    for method in SERVICE.methods:
        output = getattr(pb, method.output_type.name)
        methods[method.name] = stream if method.server_streaming else unary(output)
    return type("EmptyAnswers", (pb_grpc.EventStreamingServicer,), methods)()


@pytest_asyncio.fixture
async def wrong_server() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_EventStreamingServicer_to_server(_empty_answers(), server)
    reflection.enable_server_reflection((SERVICE.full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_smoke_script_checks_the_content_of_answers(wrong_server: str) -> None:
    # Every call succeeds at the gRPC level, but the answers are empty: the
    # script must notice and fail.
    code, output = await run_smoke(wrong_server)
    assert code == 1, output
    assert "FAIL AppendToStream writes offsets 0..2" in output
    assert re.search(r"smoke: \d+ of \d+ checks failed", output), output


async def test_smoke_script_fails_when_nothing_listens() -> None:
    code, output = await run_smoke(f"127.0.0.1:{free_port()}", timeout=60)
    assert code == 1, output
    assert "FAIL reflection lists eventstreaming.v1.EventStreaming" in output


def test_smoke_script_colours_results_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    process = None
    try:
        process = subprocess.Popen(
            ["bash", str(SCRIPT), f"127.0.0.1:{free_port()}"],
            stdout=terminal,
            stderr=terminal,
            env={key: value for key, value in os.environ.items() if key != "NO_COLOR"},
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the script is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 1
    finally:
        os.close(controller)
        if process is not None and process.poll() is None:
            process.kill()
    output = b"".join(chunks).decode(errors="replace")
    assert "\x1b[31mFAIL\x1b[0m" in output, output


def test_smoke_script_says_when_grpcurl_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "127.0.0.1:1"],
        env={**os.environ, "GRPCURL": str(tmp_path / "no-such-grpcurl")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "grpcurl not found" in result.stderr

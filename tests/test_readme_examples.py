"""Every grpcurl example of the README runs as pasted, in order, against a fresh
server: each shell block that calls grpcurl, with the address put in and the dev
install's commands on PATH (as the README tells a reader to arrange), succeeds.

A streaming example ends by its own ``-max-time`` (grpcurl then exits with
DeadlineExceeded, 64 + 4), which counts as success; any other failure is the
example's."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.conftest import RunningServer, server_settings, start_server
from tests.support import ROOT, clean_env

BLOCK_RE = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
ADDRESS = "localhost:50051"
PREAMBLE = """set -e
grpcurl() {
    local rc=0
    command grpcurl "$@" || rc=$?
    if [ "$rc" -eq 68 ] && [[ " $* " == *" -max-time "* ]]; then return 0; fi
    return "$rc"
}
"""


def examples() -> list[str]:
    """The README's shell blocks that call the service with grpcurl, in order."""
    text = (ROOT / "README.md").read_text()
    return [b for b in BLOCK_RE.findall(text) if "grpcurl" in b and ADDRESS in b]


@pytest_asyncio.fixture
async def fresh_server() -> AsyncIterator[RunningServer]:
    running = await start_server(server_settings("memory"), "memory")
    try:
        yield running
    finally:
        await running.close()


def test_the_readme_has_examples_to_run() -> None:
    found = examples()
    assert len(found) >= 6
    for block in found:
        for line in block.splitlines():
            if "Subscribe" in line and "grpcurl" in line:
                assert "-max-time" in line, f"a subscription example never ends:\n{line}"


async def test_every_grpcurl_example_runs_as_pasted(
    fresh_server: RunningServer, tmp_path: Path
) -> None:
    port = str(fresh_server.app.port)
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EVENTSTREAMING_PORT"] = port
    for number, block in enumerate(examples(), 1):
        script = PREAMBLE + block.replace(ADDRESS, f"127.0.0.1:{port}")
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, (
            f"README example {number} failed (exit {process.returncode}):\n{block}\n"
            f"--- output ---\n{output.decode(errors='replace')[-3000:]}"
        )

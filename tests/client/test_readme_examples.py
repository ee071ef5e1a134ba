"""The README's client examples run as written (against a test server), and
``pip install ./client`` in a fresh virtualenv brings no server dependency."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client import servers
from tests.support import ROOT

SECTION = re.compile(r"<!-- section:client -->(.*?)<!-- /section:client -->", re.DOTALL)
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
#: What the examples connect to; the tests swap in their server's address.
README_ADDRESS = "localhost:50051"
#: Distributions of the server that the client must never pull in.
SERVER_ONLY = {"asyncpg", "pydantic", "pydantic-settings", "prometheus-client", "grpcio-tools"}


def examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    found = SECTION.search(text)
    assert found, "the README has no client section"
    blocks = BLOCK.findall(found.group(1))
    assert len(blocks) >= 3, "the client section lost its examples"
    return blocks


@pytest.fixture
def fresh_server() -> Iterator[servers.ThreadServer]:
    server = servers.fresh("memory")
    try:
        yield server
    finally:
        server.stop()


def run_example(python: str, code: str, address: str, tmp_path: Path, **env: str) -> str:
    script = tmp_path / "example.py"
    script.write_text(code.replace(README_ADDRESS, address))
    done = subprocess.run(
        [python, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(
    index: int, fresh_server: servers.ThreadServer, tmp_path: Path
) -> None:
    output = run_example(
        sys.executable,
        examples()[index],
        fresh_server.address,
        tmp_path,
        PYTHONPATH=str(ROOT / "client"),
    )
    assert output.strip()


def test_the_client_installs_alone_and_its_examples_run(
    fresh_server: servers.ThreadServer, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # Build from a copy, so that the checkout gets no build/ or egg-info folder.
    source = tmp_path / "client"
    subprocess.run(["cp", "-r", str(ROOT / "client"), str(source)], check=True, timeout=60)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines() if line}
    assert "eventstreaming-client" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    assert "eventsourcing" not in installed  # only with the extra
    client_examples = [code for code in examples() if "eventsourcing" not in code]
    for code in client_examples:
        run_example(python, code, fresh_server.address, tmp_path)

"""Both committed copies of the generated code (the server's and the client's) match
what the proto produces today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

COPIES = {
    "server": ROOT / "server" / "generated",
    "client": ROOT / "client" / "eventstreaming_client" / "generated",
}


@pytest.mark.parametrize("target", sorted(COPIES))
def test_generated_code_is_up_to_date(tmp_path: Path, target: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "scripts/generate_protos.py",
            "--target",
            target,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = COPIES[target]
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    current = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == current, "generated files differ: run scripts/generate_protos.py"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, committed / p, shallow=False)]
    assert not stale, f"stale generated code {stale}: run scripts/generate_protos.py"


def test_the_copies_differ_only_in_their_package() -> None:
    """One proto, two packages: the client's copy is the server's with its imports
    rooted at eventstreaming_client.generated."""
    for path in COPIES["server"].rglob("*.py*"):
        if "__pycache__" in path.parts:
            continue
        twin = COPIES["client"] / path.relative_to(COPIES["server"])
        expected = path.read_text().replace(
            "from server.generated.", "from eventstreaming_client.generated."
        )
        assert twin.read_text() == expected, twin

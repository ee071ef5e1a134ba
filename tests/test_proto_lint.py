"""The proto passes ``buf lint`` (buf.yaml: STANDARD + COMMENTS), so every RPC and
field is documented and names follow the usual protobuf style."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PROTO = ROOT / "protos" / "eventstreaming" / "v1" / "event_streaming.proto"


def buf() -> str:
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.fail("buf is missing: install the dev extra (pip install -e '.[dev]', buf-bin)")
    return found


def run_buf_lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf(), "lint"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )


def test_proto_passes_buf_lint() -> None:
    result = run_buf_lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_flags_an_undocumented_field(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos" / "google", tmp_path / "protos" / "google")
    target = tmp_path / PROTO.relative_to(ROOT)
    target.parent.mkdir(parents=True)
    text = PROTO.read_text()
    anchor = "message DeleteStreamResponse {}"
    assert anchor in text
    target.write_text(
        text.replace(anchor, "message DeleteStreamResponse {\n  string undocumented = 1;\n}")
    )
    result = run_buf_lint(tmp_path)
    assert result.returncode != 0
    assert "undocumented" in result.stdout + result.stderr


def test_service_suffix_exception_is_explained() -> None:
    config = (ROOT / "buf.yaml").read_text()
    assert "SERVICE_SUFFIX" in config
    lines = config.splitlines()
    at = next(i for i, line in enumerate(lines) if "- SERVICE_SUFFIX" in line)
    assert lines[at - 1].strip().startswith("#"), "say why the suffix rule is excluded"

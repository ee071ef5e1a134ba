"""Settings: defaults, and a bad value stops the process with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.settings import Settings, SettingsError, load_settings
from tests.support import ROOT


def test_defaults_are_the_development_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EVENTSTREAMING_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT / "tests")  # no .env file here
    settings = Settings()
    assert settings.storage == "memory"
    assert settings.auto_migrate is True
    assert (settings.host, settings.port) == ("0.0.0.0", 50051)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTSTREAMING_PORT", "not-a-port"),
        ("EVENTSTREAMING_PORT", "70000"),
        ("EVENTSTREAMING_STORAGE", "mongodb"),
        ("EVENTSTREAMING_AUTO_MIGRATE", "perhaps"),
        ("EVENTSTREAMING_POOL_MAX_SIZE", "0"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_pool_min_above_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTREAMING_POOL_MIN_SIZE", "20")
    monkeypatch.setenv("EVENTSTREAMING_POOL_MAX_SIZE", "5")
    with pytest.raises(SettingsError, match="POOL_MIN_SIZE"):
        load_settings()


def test_process_with_bad_setting_exits_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        env={**os.environ, "EVENTSTREAMING_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "EVENTSTREAMING_PORT" in lines[0]
    assert "Traceback" not in result.stderr

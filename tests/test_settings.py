"""Settings: defaults, and a bad value stops the process with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings, SettingsError, load_settings, unknown_variables
from tests.support import ROOT, clean_env


def test_defaults_are_the_development_setup(no_settings: None) -> None:
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
        ("EVENTSTREAMING_DB_CONNECT_TIMEOUT_SECONDS", "0"),
        ("EVENTSTREAMING_DB_STATEMENT_TIMEOUT_SECONDS", "-1"),
        ("EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS", "-1"),
        ("EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS", "soon"),
        ("EVENTSTREAMING_LOG_LEVEL", "chatty"),
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


def test_database_timeouts_default_and_reach_storage(no_settings: None) -> None:
    settings = load_settings()
    assert settings.database_timeouts() == {
        "connect_timeout": 5.0,
        "statement_timeout": 30.0,
        "startup_timeout": 60.0,
    }


@pytest.mark.parametrize(
    ("variable", "given", "used"),
    [
        ("EVENTSTREAMING_LOG_LEVEL", "debug", "DEBUG"),
        ("EVENTSTREAMING_LOG_LEVEL", "Warning", "WARNING"),
        ("EVENTSTREAMING_LOG_FORMAT", "JSON", "json"),
        ("EVENTSTREAMING_STORAGE", "Postgres", "postgres"),
    ],
)
def test_choices_are_accepted_in_any_case(
    no_settings: None, monkeypatch: pytest.MonkeyPatch, variable: str, given: str, used: str
) -> None:
    monkeypatch.setenv(variable, given)
    settings = load_settings()
    assert getattr(settings, variable.removeprefix("EVENTSTREAMING_").lower()) == used


def test_process_accepts_a_lower_case_log_level() -> None:
    env = clean_env()
    result = subprocess.run(
        [sys.executable, "-m", "server", "config"],
        cwd=ROOT / "tests",
        env={**env, "EVENTSTREAMING_LOG_LEVEL": "debug"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "EVENTSTREAMING_LOG_LEVEL=DEBUG" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:pa/ss#w?rd@127.0.0.1:5432/db", "pa/ss#w?rd"),
        ("postgresql://u:pa@ss@127.0.0.1:5432/db", "pa@ss"),
        ("postgresql://u:passw?rd@127.0.0.1:5432/db", "passw?rd"),
    ],
)
def test_a_database_url_the_driver_would_misread_is_refused_masked(
    no_settings: None, monkeypatch: pytest.MonkeyPatch, url: str, password: str
) -> None:
    monkeypatch.setenv("EVENTSTREAMING_DATABASE_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(
        "invalid setting EVENTSTREAMING_DATABASE_URL='postgresql://u:****@127.0.0.1:5432/db': "
    )
    assert "percent-encode" in message
    assert password not in message
    assert "\n" not in message


def test_a_percent_encoded_password_is_accepted(
    no_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://u:pa%2Fss%23w%3Frd%40@127.0.0.1:5432/db"
    monkeypatch.setenv("EVENTSTREAMING_DATABASE_URL", url)
    assert load_settings().database_url.get_secret_value() == url


def test_unknown_variables_name_the_closest_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EVENTSTREAMING_METRIC_PORT=9464\nEVENTSTREAMING_HOST=127.0.0.1\n")
    found = unknown_variables(
        {
            "EVENTSTREAMING_PROT": "1",
            "eventstreaming_databse_url": "x",
            "EVENTSTREAMING_PORT": "1",
            "EVENTSTREAMING_TEST_DATABASE_URL": "x",
            "EVENTSTREAMING_QWERTYUIOP": "x",
            "PATH": "/bin",
        },
        env_file,
    )
    assert found == [
        ("EVENTSTREAMING_DATABSE_URL", "EVENTSTREAMING_DATABASE_URL"),
        ("EVENTSTREAMING_METRIC_PORT", "EVENTSTREAMING_METRICS_PORT"),
        ("EVENTSTREAMING_PROT", "EVENTSTREAMING_PORT"),
        ("EVENTSTREAMING_QWERTYUIOP", None),
    ]

"""The ``eventstreaming`` command line: help on every command, ``serve`` as the
default, ``config`` with secrets masked, ``health``, ``migrate`` (+ ``--status``)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import pytest

from server.cli import describe_settings, main, mask_dsn
from server.settings import Settings
from storage.errors import StorageError
from tests.conftest import _run_in_thread
from tests.support import (
    ROOT,
    child_process,
    clean_env,
    command,
    create_database,
    drop_database,
    dsn_for,
    free_port,
    wait_until_sync,
)


def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        cwd=ROOT / "tests",  # no .env file here
        env=dict(env if env is not None else clean_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ([], ["serve", "migrate", "retention", "config", "health"]),
        (["serve"], ["usage: eventstreaming serve"]),
        (["migrate"], ["--status"]),
        (["retention"], ["run-once"]),
        (["retention", "run-once"], ["usage: eventstreaming retention run-once"]),
        (["config"], ["masked"]),
        (["health"], ["--address", "--timeout", "--ca-file"]),
    ],
)
def test_every_command_has_help(
    args: list[str], mentions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for word in mentions:
        assert word in shown


def test_the_console_script_runs() -> None:
    result = run(["--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: eventstreaming")


def test_config_prints_every_setting_with_secrets_masked() -> None:
    result = run(
        ["config"],
        clean_env(
            EVENTSTREAMING_STORAGE="postgres",
            EVENTSTREAMING_DATABASE_URL="postgresql://app:hunter2@db.example:5432/events",
            EVENTSTREAMING_AUTH_TOKENS="tok-one,tok-two",
            EVENTSTREAMING_METRICS_PORT="9464",
        ),
    )
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(shown) == {f"EVENTSTREAMING_{name.upper()}" for name in Settings.model_fields}
    assert shown["EVENTSTREAMING_STORAGE"] == "postgres"
    assert shown["EVENTSTREAMING_METRICS_PORT"] == "9464"
    assert shown["EVENTSTREAMING_DATABASE_URL"] == "postgresql://app:****@db.example:5432/events"
    assert shown["EVENTSTREAMING_AUTH_TOKENS"] == "**** (2 tokens)"
    for secret in ("hunter2", "tok-one", "tok-two"):
        assert secret not in result.stdout


def test_config_with_a_bad_setting_exits_with_one_line() -> None:
    result = run(["config"], clean_env(EVENTSTREAMING_LOG_FORMAT="xml"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "EVENTSTREAMING_LOG_FORMAT" in result.stderr


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:p4ss@h:5432/d", "postgresql://u:****@h:5432/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://u:p4ss@h/d?sslmode=require", "postgresql://u:****@h/d?sslmode=require"),
        ("postgresql://h/d?user=u&password=p4ss", "postgresql://h/d?user=u&password=****"),
        ("host=h user=u password=p4ss dbname=d", "host=h user=u password=**** dbname=d"),
        # Unencoded special characters: the userinfo ends at the last @ before the host.
        (
            "postgresql://u:pa/ss#w?rd@127.0.0.1:5432/db",
            "postgresql://u:****@127.0.0.1:5432/db",
        ),
        ("postgresql://u:p@ss@h/d", "postgresql://u:****@h/d"),
        ("postgresql://u:sec?ret@h:5432/d", "postgresql://u:****@h:5432/d"),
        ("postgresql://u:123/x@h/d", "postgresql://u:****@h/d"),
        ("postgresql://u:p%2Fss@h/d", "postgresql://u:****@h/d"),
        ("postgresql://h/d?password=a#b&user=u", "postgresql://h/d?password=****&user=u"),
        ("host=h password='a b#c' dbname=d", "host=h password=**** dbname=d"),
    ],
)
def test_database_passwords_are_masked(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


#: Passwords with characters left unencoded, each in a URL that leads nowhere
#: sensible if read the standard way (before: printed, or a traceback quoting them).
LEAKY_URLS = {
    "pa/ss#w?rd": "postgresql://u:pa/ss#w?rd@127.0.0.1:5432/db",
    "s3cr?tpass": "postgresql://u:s3cr?tpass@127.0.0.1:5432/db",
    "4242/secret": "postgresql://u:4242/secret@127.0.0.1:5432/db",
    "p@sswordy": "postgresql://u:p@sswordy@127.0.0.1:5432/db",
    "hash#tagpw": "postgresql://u:hash#tagpw@127.0.0.1/db",
}


@pytest.mark.parametrize(
    "args",
    [["config"], ["serve"], ["migrate"], ["migrate", "--status"], ["retention", "run-once"]],
    ids=" ".join,
)
@pytest.mark.parametrize("password", list(LEAKY_URLS))
def test_a_password_with_unencoded_characters_never_reaches_the_terminal(
    args: list[str], password: str
) -> None:
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_DATABASE_URL=LEAKY_URLS[password],
        EVENTSTREAMING_PORT="0",
    )
    result = run(args, env)
    output = result.stdout + result.stderr
    for piece in {password, *password.replace("?", "/").replace("#", "/").split("/")}:
        if len(piece) >= 4:
            assert piece not in output, output
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("eventstreaming: invalid setting EVENTSTREAMING_DATABASE_URL=")
    assert "u:****@" in lines[0]
    assert "percent-encode" in lines[0]


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("mysql://u@h/d", "must start with postgresql://"),
        ("postgresql://u@h:port/d", "a port is not a number"),
        ("postgresql://u@h:99999/d", "a port is not a number"),
        ("postgresql://u@h/d?sslmode", "not name=value pairs"),
        ("host=h user=u password=p4ss", "must start with postgresql://"),
    ],
)
def test_a_malformed_database_url_is_one_line(dsn: str, problem: str) -> None:
    result = run(["migrate"], clean_env(EVENTSTREAMING_DATABASE_URL=dsn))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("eventstreaming: invalid setting EVENTSTREAMING_DATABASE_URL=")
    assert problem in line
    assert "p4ss" not in line


def test_an_encoded_password_works_and_is_never_shown(empty_database: str) -> None:
    password = "pa/ss#w?rd@x"
    encoded = "pa%2Fss%23w%3Frd%40x"
    url = empty_database.replace("postgresql://postgres@", f"postgresql://postgres:{encoded}@")
    assert encoded in url
    env = clean_env(EVENTSTREAMING_DATABASE_URL=url)
    status = run(["migrate", "--status"], env)  # trust authentication: accepted
    assert status.returncode == 0, status.stderr
    shown = run(["config"], env)
    missing = run(["migrate"], clean_env(EVENTSTREAMING_DATABASE_URL=url + "_missing"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    for result in (status, shown, missing):
        for secret in (password, encoded, "pa/ss"):
            assert secret not in result.stdout + result.stderr


def test_version_prints_the_installed_version() -> None:
    result = run(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"eventstreaming {version('eventstreaming')}"


def readme_configuration_rows() -> dict[str, str]:
    """README configuration table: variable -> the default column, as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section:operations -->")[1].split("### Configuration")[1]
    table = section.split("\n### ")[0]
    return {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
        for line in table.splitlines()
        if line.startswith("| `EVENTSTREAMING_")
    }


def test_config_shows_defaults_as_the_readme_writes_them() -> None:
    result = run(["config"])
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines())
    compared = 0
    for variable, default in readme_configuration_rows().items():
        if variable not in shown:
            continue  # a row for a setting this version does not have fails elsewhere
        if default.startswith("`"):
            assert shown[variable] == default.strip("`"), variable
        else:  # (none), (empty)
            assert shown[variable] == "", variable
        compared += 1
    assert compared >= 15


def test_config_shows_values_as_they_would_be_set(tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    key = tmp_path / "server.key"
    cert.write_text("not checked by config")
    key.write_text("not checked by config")
    result = run(
        ["config"],
        clean_env(
            EVENTSTREAMING_AUTO_MIGRATE="False",
            EVENTSTREAMING_SHUTDOWN_GRACE_SECONDS="2.5",
            EVENTSTREAMING_RETENTION_INTERVAL_SECONDS="30",
            EVENTSTREAMING_TLS_CERT_FILE=str(cert),
            EVENTSTREAMING_TLS_KEY_FILE=str(key),
            EVENTSTREAMING_LOG_LEVEL="debug",
        ),
    )
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert shown["EVENTSTREAMING_AUTO_MIGRATE"] == "false"
    assert shown["EVENTSTREAMING_SHUTDOWN_GRACE_SECONDS"] == "2.5"
    assert shown["EVENTSTREAMING_RETENTION_INTERVAL_SECONDS"] == "30"
    assert shown["EVENTSTREAMING_TLS_CERT_FILE"] == str(cert)
    assert shown["EVENTSTREAMING_LOG_LEVEL"] == "DEBUG"
    for value in shown.values():
        assert "SecretStr" not in value
        assert "Path(" not in value
        assert value not in ("True", "False", "None")


def test_unknown_variables_are_warned_about_once_each() -> None:
    result = run(
        ["config"],
        clean_env(
            EVENTSTREAMING_PROT="50052",
            EVENTSTREAMING_LOGLEVEL="DEBUG",
            EVENTSTREAMING_ZZZ_NOTHING_LIKE_IT="1",
            EVENTSTREAMING_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1/postgres",
        ),
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 3, result.stderr
    assert any(
        "EVENTSTREAMING_PROT is not a setting" in w and "did you mean EVENTSTREAMING_PORT?" in w
        for w in warnings
    )
    assert any("did you mean EVENTSTREAMING_LOG_LEVEL?" in w for w in warnings)
    assert any(
        "EVENTSTREAMING_ZZZ_NOTHING_LIKE_IT" in w and "did you mean" not in w for w in warnings
    )
    assert "TEST_DATABASE_URL" not in result.stderr
    assert "EVENTSTREAMING_PORT=50051" in result.stdout  # the misspelt one changed nothing


def test_unset_optional_settings_show_empty() -> None:
    shown = dict(describe_settings(Settings(_env_file=None)))  # type: ignore[call-arg]
    assert shown["EVENTSTREAMING_TLS_CERT_FILE"] == ""
    assert shown["EVENTSTREAMING_AUTH_TOKENS"] == ""


def test_health_fails_when_no_server_answers() -> None:
    port = free_port()
    result = run(["health", "--timeout", "1"], clean_env(EVENTSTREAMING_PORT=str(port)))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}: UNREACHABLE" in result.stdout


@pytest.fixture
def serving_without_command() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = clean_env(EVENTSTREAMING_HOST="127.0.0.1", EVENTSTREAMING_PORT=str(port))
    with child_process(command(), env) as process:  # no command: serve
        yield process, port


def test_serve_is_the_default_command_and_health_reports_it(
    serving_without_command: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = serving_without_command
    env = clean_env(EVENTSTREAMING_PORT=str(port))

    def serving() -> subprocess.CompletedProcess[str] | None:
        assert process.poll() is None, "the server exited"
        result = run(["health", "--timeout", "1"], env)
        return result if result.returncode == 0 else None

    result = wait_until_sync(serving)
    assert result.stdout.strip() == f"127.0.0.1:{port}: SERVING"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = _run_in_thread(create_database())
    try:
        yield dsn_for(name)
    finally:
        _run_in_thread(drop_database(name))


def test_migrate_applies_pending_migrations_and_status_reports_them(empty_database: str) -> None:
    env = clean_env(EVENTSTREAMING_DATABASE_URL=empty_database)
    migrations = sorted(p.name for p in (ROOT / "migrations").glob("[0-9]*.sql"))
    before = run(["migrate", "--status"], env)
    assert before.returncode == 0, before.stderr
    assert f"0 applied, {len(migrations)} pending" in before.stdout
    applied = run(["migrate"], env)
    assert applied.returncode == 0, applied.stderr
    for name in migrations:
        assert f"applied {name}" in applied.stdout
    after = run(["migrate", "--status"], env)
    assert f"{len(migrations)} applied, 0 pending" in after.stdout
    again = run(["migrate"], env)
    assert "0 migration(s) applied" in again.stdout


def test_migrate_says_when_the_database_is_unreachable() -> None:
    port = free_port()
    env = clean_env(
        EVENTSTREAMING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x",
        EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS="0",
    )
    result = run(["migrate", "--status"], env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()  # one attempt: no retry logged
    assert line.startswith(
        "eventstreaming: EVENTSTREAMING_DATABASE_URL: cannot connect to PostgreSQL at "
        f'127.0.0.1:{port} (database "x"): connection refused; gave up after '
    )
    assert line.endswith(" s (EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS)")
    assert "Traceback" not in result.stderr


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section:operations -->")[1].split("### Configuration")[1]
    table = section.split("\n### ")[0]
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in table.splitlines()
        if line.startswith("| `EVENTSTREAMING_")
    }
    assert rows == {f"EVENTSTREAMING_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError("boom: postgresql://u:hunter2secret@h/d"), 1),
        (StorageError("database said hunter2secret"), 1),
        (KeyError("hunter2secret"), 1),
    ],
)
def test_no_message_ever_shows_the_password(
    no_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
) -> None:
    """The last line of defence: whatever an error quotes, the printed line is
    scrubbed of the password, and there is no traceback."""
    monkeypatch.setenv("EVENTSTREAMING_DATABASE_URL", "postgresql://u:hunter2secret@h/d")
    monkeypatch.setattr("server.cli.configure_logging", lambda *args: None)

    def fail(*args: object) -> int:
        raise error

    monkeypatch.setattr("server.cli._run", fail)
    assert main(["migrate"]) == code
    captured = capsys.readouterr()
    assert "hunter2secret" not in captured.out + captured.err
    assert "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith("eventstreaming: ")
    assert "****" in line

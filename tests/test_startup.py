"""Start-up failures: a port or host that cannot be used, and a database that is
missing, unreachable, silent or late. Each stops the process with one line naming
the setting (exit code 2), and a database that comes up late is waited for."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from server.app import EventStreamingServer
from server.settings import StartupError
from storage.errors import DatabaseRefused, DatabaseUnreachable
from storage.postgres import connect
from storage.postgres.migrations import ADVISORY_LOCK_KEY
from tests.conftest import _run_in_thread, server_settings
from tests.support import (
    ROOT,
    ServerProcess,
    TcpProxy,
    clean_env,
    create_database,
    drop_database,
    dsn_for,
    free_port,
    wait_until,
)

#: Far below the 60 s a silent database used to hold the boot, far above the
#: few seconds the short limits these tests set should take.
GENEROUS = 40.0


def cli(
    args: Sequence[str], env: Mapping[str, str], *, module: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The console script (or ``python -m server`` when ``module``), run to the end."""
    script = Path(sys.executable).parent / "eventstreaming"
    program = [sys.executable, "-m", "server"] if module or not script.exists() else [str(script)]
    return subprocess.run(
        [*program, *args],
        cwd=ROOT / "tests",  # no .env file here
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines the command printed as its verdict (log lines left out)."""
    return [line for line in result.stderr.splitlines() if line.startswith("eventstreaming: ")]


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [f"eventstreaming: {expected}"], result.stderr


# -- ports and hosts ------------------------------------------------------------------
@pytest.mark.parametrize("module", [False, True], ids=["console-script", "python-m-server"])
def test_a_taken_grpc_port_stops_the_start(listening: int, module: bool) -> None:
    env = clean_env(EVENTSTREAMING_HOST="127.0.0.1", EVENTSTREAMING_PORT=str(listening))
    result = cli(["serve"], env, module=module)
    assert_one_line_exit_2(result, f"EVENTSTREAMING_PORT: 127.0.0.1:{listening} is already in use")
    assert result.stderr.count("\n") == 1, result.stderr  # not even gRPC's own log line


async def test_a_second_server_on_the_same_port_stops_instead_of_sharing_it(
    tmp_path: Path,
) -> None:
    first = await ServerProcess.start({"EVENTSTREAMING_STORAGE": "memory"}, tmp_path / "1.log")
    try:
        env = clean_env(EVENTSTREAMING_HOST="127.0.0.1", EVENTSTREAMING_PORT=str(first.port))
        # Run off the loop; before the fix the second server served (until killed).
        result = await asyncio.to_thread(cli, ["serve"], env, timeout=GENEROUS)
        assert_one_line_exit_2(
            result, f"EVENTSTREAMING_PORT: 127.0.0.1:{first.port} is already in use"
        )
        await first.wait_serving(timeout=5)
    finally:
        assert await first.terminate() == 0


def test_a_taken_metrics_port_stops_the_start(listening: int) -> None:
    env = clean_env(
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT="0",
        EVENTSTREAMING_METRICS_PORT=str(listening),
    )
    result = cli(["serve"], env)
    assert_one_line_exit_2(
        result, f"EVENTSTREAMING_METRICS_PORT: 127.0.0.1:{listening} is already in use"
    )


def test_an_unknown_host_stops_the_start() -> None:
    env = clean_env(EVENTSTREAMING_HOST="no.such.host.invalid", EVENTSTREAMING_PORT="0")
    result = cli(["serve"], env, module=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith("eventstreaming: EVENTSTREAMING_HOST: cannot resolve")
    assert "no.such.host.invalid" in line


async def test_the_metrics_port_equal_to_the_grpc_port_is_one_error() -> None:
    port = free_port()
    app = EventStreamingServer(server_settings("memory", port=port, metrics_port=port))
    try:
        with pytest.raises(StartupError) as caught:
            await app.start()
    finally:
        await app.stop(grace=0)
    assert str(caught.value).startswith("EVENTSTREAMING_METRICS_PORT: cannot serve metrics")


# -- the database -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def missing_database() -> str:
    """A database name nobody created."""
    return f"es_test_missing_{os.getpid()}"


@pytest.mark.parametrize(
    "args",
    [["serve"], ["migrate"], ["migrate", "--status"], ["retention", "run-once"]],
    ids=" ".join,
)
def test_a_missing_database_is_named_at_once(args: list[str], missing_database: str) -> None:
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_DATABASE_URL=dsn_for(missing_database),
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT="0",
    )
    started = time.monotonic()
    result = cli(args, env)
    address = dsn_for("").split("@")[-1].rstrip("/")
    assert_one_line_exit_2(
        result,
        f'EVENTSTREAMING_DATABASE_URL: database "{missing_database}" does not exist at {address}',
    )
    # A permanent failure: no retrying up to the (default 60 s) start-up deadline.
    assert time.monotonic() - started < GENEROUS
    assert "retrying" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["serve"], ["migrate"], ["migrate", "--status"], ["retention", "run-once"]],
    ids=" ".join,
)
def test_a_port_nothing_listens_on_is_retried_then_named(args: list[str]) -> None:
    port = free_port()
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/events",
        EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS="2",
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT="0",
    )
    result = cli(args, env, timeout=GENEROUS)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith(
        f"eventstreaming: EVENTSTREAMING_DATABASE_URL: cannot connect to PostgreSQL at "
        f'127.0.0.1:{port} (database "events"): connection refused; gave up after '
    )
    assert line.endswith(" s (EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS)")
    waited = float(line.rsplit("gave up after ", 1)[1].split(" s ")[0])
    assert 2.0 <= waited < GENEROUS
    # Each retry is logged, naming where and why.
    assert f"PostgreSQL at 127.0.0.1:{port}" in result.stderr.split("eventstreaming: ")[0]
    assert "not reachable yet (connection refused); retrying in" in result.stderr


@pytest_asyncio.fixture
async def silent_database() -> AsyncIterator[int]:
    """A TCP listener that accepts and reads, and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def run_async(
    args: Sequence[str], env: Mapping[str, str], timeout: float = GENEROUS
) -> subprocess.CompletedProcess[str]:
    """As :func:`cli`, while this loop keeps serving (the silent database runs on it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        cwd=ROOT / "tests",
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{args} did not stop within {timeout} s") from None
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


@pytest.mark.parametrize("args", [["serve"], ["migrate", "--status"]], ids=" ".join)
async def test_a_database_that_never_answers_is_given_up_on_soon(
    args: list[str], silent_database: int
) -> None:
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{silent_database}/events",
        EVENTSTREAMING_DB_CONNECT_TIMEOUT_SECONDS="1",
        EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS="1",
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT="0",
    )
    started = time.monotonic()
    result = await run_async(args, env)
    assert time.monotonic() - started < GENEROUS
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith(
        "eventstreaming: EVENTSTREAMING_DATABASE_URL: cannot connect to PostgreSQL at "
        f'127.0.0.1:{silent_database} (database "events"): no answer within 1 s '
        "(EVENTSTREAMING_DB_CONNECT_TIMEOUT_SECONDS); gave up after "
    )


async def test_a_database_that_comes_up_later_is_waited_for(
    proxy: TcpProxy, pg_database: str, tmp_path: Path
) -> None:
    proxy.cut()  # connections refused, as while the database container starts
    server = await ServerProcess.start(
        {
            "EVENTSTREAMING_STORAGE": "postgres",
            "EVENTSTREAMING_DATABASE_URL": proxy.dsn(pg_database),
            "EVENTSTREAMING_STARTUP_TIMEOUT_SECONDS": "20",
        },
        tmp_path / "server.log",
        wait=False,
    )
    try:
        await wait_until(lambda: server.log().count("retrying in") >= 2, timeout=GENEROUS)
        assert server.process.poll() is None, server.log()
        proxy.restore()
        await server.wait_serving(timeout=GENEROUS)
    finally:
        proxy.restore()
        assert await server.terminate() == 0


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = _run_in_thread(create_database())
    try:
        yield name
    finally:
        _run_in_thread(drop_database(name))


async def test_the_statement_timeout_bounds_start_up_work(empty_database: str) -> None:
    """Migrating waits for a lock another replica holds; the statement timeout
    bounds that wait, and the line names the setting."""
    locker = await asyncpg.connect(dsn_for(empty_database))
    try:
        await locker.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        env = clean_env(
            EVENTSTREAMING_DATABASE_URL=dsn_for(empty_database),
            EVENTSTREAMING_DB_STATEMENT_TIMEOUT_SECONDS="1",
        )
        result = await run_async(["migrate"], env)
    finally:
        await locker.close()
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith("eventstreaming: EVENTSTREAMING_DATABASE_URL: PostgreSQL at ")
    assert line.endswith(
        f'(database "{empty_database}"): a statement took longer than 1 s '
        "(EVENTSTREAMING_DB_STATEMENT_TIMEOUT_SECONDS)"
    )


# -- retrying, in process -------------------------------------------------------------
def test_backoff_doubles_up_to_a_cap_with_jitter() -> None:
    for failures in range(1, 40):
        ceiling = min(connect.FIRST_RETRY_DELAY * 2 ** (failures - 1), connect.MAX_RETRY_DELAY)
        draws = [connect.backoff(failures) for _ in range(50)]
        assert all(ceiling / 2 <= pause <= ceiling for pause in draws)
        assert len(set(draws)) > 1  # jitter: replicas do not retry in step
    assert connect.backoff(1) <= connect.FIRST_RETRY_DELAY
    assert connect.backoff(100) >= connect.MAX_RETRY_DELAY / 2


async def test_transient_failures_are_retried_until_one_succeeds() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        if calls == 2:
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        if calls == 3:
            raise asyncpg.TooManyConnectionsError("sorry, too many clients already")
        return "connected"

    options = connect.ConnectOptions(startup_timeout=GENEROUS)
    assert await connect.retry_connect(attempt, "postgresql://h/d", options) == "connected"
    assert calls == 4


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (asyncpg.InvalidCatalogNameError('database "d" does not exist'), 'database "d" does not'),
        (
            asyncpg.InvalidPasswordError('password authentication failed for user "u"'),
            'password authentication failed for user "u"',
        ),
        (
            asyncpg.InvalidAuthorizationSpecificationError('role "u" does not exist'),
            'role "u" does not exist',
        ),
    ],
)
async def test_permanent_failures_are_not_retried(error: Exception, reason: str) -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise error

    options = connect.ConnectOptions(startup_timeout=GENEROUS)
    with pytest.raises(DatabaseRefused) as caught:
        await connect.retry_connect(attempt, "postgresql://u:pw@h:6543/d", options)
    assert calls == 1
    assert str(caught.value).startswith(f"{reason}")
    assert "at h:6543" in str(caught.value)


async def test_transient_failures_give_up_at_the_deadline() -> None:
    async def attempt() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    options = connect.ConnectOptions(startup_timeout=0.5)
    with pytest.raises(DatabaseUnreachable) as caught:
        await connect.retry_connect(attempt, "postgresql://h:6543/d", options)
    assert caught.value.waited is not None
    assert 0.5 <= caught.value.waited < GENEROUS
    assert (caught.value.address, caught.value.database) == ("h:6543", "d")
    assert caught.value.reason == "connection refused"


# -- layering -------------------------------------------------------------------------
def test_server_reaches_storage_only_through_the_factory() -> None:
    """No module of server/ imports a backend or the driver: the port is the
    interface (storage.interface), the factory and the records and errors."""
    store_builds = 0
    for path in sorted((ROOT / "server").rglob("*.py")):
        relative = path.relative_to(ROOT / "server")
        if relative.parts[0] == "generated":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "create_store":
                    store_builds += 1
                continue
            for module in modules:
                assert module.split(".")[0] != "asyncpg", f"{relative} imports {module}"
                assert not module.startswith(("storage.postgres", "storage.memory")), (
                    f"{relative} imports {module}"
                )
    assert store_builds == 1, "one function builds the store from the settings"


def test_a_schema_that_is_not_up_to_date_names_the_database(empty_database: str) -> None:
    env = clean_env(
        EVENTSTREAMING_STORAGE="postgres",
        EVENTSTREAMING_DATABASE_URL=dsn_for(empty_database),
        EVENTSTREAMING_AUTO_MIGRATE="false",
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT="0",
    )
    result = cli(["serve"], env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    address = dsn_for("").split("@")[-1].rstrip("/")
    assert line.startswith(
        f"eventstreaming: EVENTSTREAMING_DATABASE_URL: PostgreSQL at {address} "
        f'(database "{empty_database}"): '
    )
    assert "EVENTSTREAMING_AUTO_MIGRATE is false" in line

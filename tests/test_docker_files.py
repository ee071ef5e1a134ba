"""Dockerfile, requirements.lock and docker-compose.yml, checked without a Docker
engine or the network: the files are parsed and their wiring checked, and the image's
entry command (ENTRYPOINT + CMD, its HEALTHCHECK) is run directly with the image's
environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from server.settings import Settings
from tests.support import ROOT, child_process, clean_env, command, free_port, wait_until_sync

PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
PINNED_POSTGRES = re.compile(r"^postgres:15\.\d+(-[a-z]+)?$")
LOCK = "requirements.lock"
LOCK_SCRIPT = "scripts/lock_requirements.sh"
#: What the builder stage copies after the lock, to install the package itself.
PACKAGE_SOURCES = {"pyproject.toml", "README.md", "migrations", "storage", "server"}
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        [args] = self.all(keyword)
        return args


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            arguments[name.strip()] = default.strip()
        elif keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return arguments, stages


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"use the exec (JSON) form: {args}"
    return [str(part) for part in parsed]


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def copy_sources(args: str) -> list[str]:
    """The build-context paths of a COPY (none for COPY --from=STAGE)."""
    words = args.split()
    if any(word.startswith("--from=") for word in words):
        return []
    *sources, _ = [word for word in words if not word.startswith("--")]
    return sources


def shell_commands(args: str) -> list[list[str]]:
    """A RUN's shell line, split into its commands at && and ;."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(args):
        if word in {"&&", ";"}:
            commands.append([])
        else:
            commands[-1].append(word)
    return [words for words in commands if words]


def pip_commands(stage: Stage, subcommand: str) -> list[tuple[int, list[str]]]:
    """(instruction index, words) of each pip SUBCOMMAND the stage RUNs."""
    found: list[tuple[int, list[str]]] = []
    for index, (keyword, args) in enumerate(stage.instructions):
        if keyword != "RUN":
            continue
        for words in shell_commands(args):
            is_pip = any(PurePosixPath(word).name in {"pip", "pip3"} for word in words)
            if is_pip and subcommand in words:
                found.append((index, words))
    return found


@dataclass
class Locked:
    requirement: Requirement
    hashes: list[str]


def parse_lock(text: str) -> list[Locked]:
    """The lock's requirements with their --hash options, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            logical.append(line)
    assert not pending.strip(), f"continued past the end: {pending}"
    entries: list[Locked] = []
    for line in logical:
        assert not line.startswith("-"), f"only requirements, each with its --hash options: {line}"
        requirement, *options = re.split(r"\s+(?=--)", line)
        hashes = []
        for option in options:
            name, _, value = option.partition("=")
            assert name == "--hash", f"only requirements with --hash options: {line}"
            hashes.append(value)
        entries.append(Locked(Requirement(requirement), hashes))
    return entries


def image_marker_environment(arguments: dict[str, str]) -> dict[str, str]:
    """Environment markers of the image's Python (CPython on Linux, the base's version)."""
    match = re.match(r"^python:(\d+\.\d+\.\d+)-", arguments["PYTHON_IMAGE"])
    assert match, arguments["PYTHON_IMAGE"]
    version = match.group(1)
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(
        implementation_name="cpython",
        implementation_version=version,
        platform_python_implementation="CPython",
        python_full_version=version,
        python_version=".".join(version.split(".")[:2]),
        os_name="posix",
        sys_platform="linux",
        platform_system="Linux",
    )
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def builder(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    [stage] = [s for s in dockerfile[1] if s.name == "builder"]
    return stage


@pytest.fixture(scope="module")
def lock() -> list[Locked]:
    return parse_lock((ROOT / LOCK).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


# -- Dockerfile -----------------------------------------------------------------------------
def test_every_stage_uses_a_pinned_slim_python_base(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    external = [s.base for s in stages if s.base not in {t.name for t in stages}]
    assert external
    for base in external:
        assert PINNED_PYTHON.match(base), base


def test_image_is_multi_stage_and_the_runtime_gets_only_the_built_venv(
    dockerfile: tuple[dict[str, str], list[Stage]], runtime: Stage
) -> None:
    _, stages = dockerfile
    names = [s.name for s in stages]
    assert {"builder", "smoke", "runtime"} <= set(names)
    assert runtime.name == "runtime", "the runtime image is the last (default) stage"
    assert runtime.all("RUN"), "creates its user"
    for args in runtime.all("RUN"):
        assert "pip" not in args, args
        assert "apt-get" not in args, args
    copies = runtime.all("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    builder = stages[names.index("builder")]
    installs = pip_commands(builder, "install")
    assert installs
    for _, words in installs:
        assert not any("[dev]" in word for word in words), words
        assert "-e" not in words
        assert "--editable" not in words
    # The build installs the package (with its migrations) from these sources only.
    for args in builder.all("COPY"):
        for source in copy_sources(args):
            assert (ROOT / source).exists(), source


def test_builder_installs_the_lock_with_hashes_before_it_copies_any_source(
    builder: Stage,
) -> None:
    hashed = [
        (index, words)
        for index, words in pip_commands(builder, "install")
        if "--require-hashes" in words
    ]
    assert len(hashed) == 1, f"one pip install --require-hashes -r {LOCK}"
    [(at, install)] = hashed
    assert "--no-deps" in install, "everything it needs is in the lock"
    files = [
        install[i + 1] for i, word in enumerate(install[:-1]) if word in {"-r", "--requirement"}
    ]
    assert files == [LOCK], install
    copied_before = [
        source
        for keyword, args in builder.instructions[:at]
        if keyword == "COPY"
        for source in copy_sources(args)
    ]
    assert copied_before == [LOCK], "the dependencies' layer depends on the lock alone"
    copied_after = {
        source
        for keyword, args in builder.instructions[at + 1 :]
        if keyword == "COPY"
        for source in copy_sources(args)
    }
    assert copied_after >= PACKAGE_SOURCES


def test_builder_installs_the_package_without_its_dependencies(builder: Stage) -> None:
    [(at, install)] = [
        (index, words) for index, words in pip_commands(builder, "install") if "." in words
    ]
    assert "--no-deps" in install, "a code change must not reinstall the dependencies"
    assert "--require-hashes" not in install
    copied_before = {
        source
        for keyword, args in builder.instructions[:at]
        if keyword == "COPY"
        for source in copy_sources(args)
    }
    assert copied_before >= PACKAGE_SOURCES
    # ... and the build fails if the lock no longer satisfies pyproject.toml.
    assert [index for index, _ in pip_commands(builder, "check")] == [at]


def test_runtime_runs_as_a_non_root_user(runtime: Stage) -> None:
    user = runtime.one("USER").split(":")[0]
    assert user not in {"root", "0"}
    assert any(user in args or "useradd" in args for args in runtime.all("RUN"))


def test_runtime_exposes_the_grpc_and_metrics_ports(runtime: Stage) -> None:
    exposed = {int(port.split("/")[0]) for port in runtime.one("EXPOSE").split()}
    env = image_env(runtime)
    settings = Settings(
        _env_file=None,
        **{  # type: ignore[call-arg, arg-type]
            key.removeprefix("EVENTSTREAMING_").lower(): value
            for key, value in env.items()
            if key.startswith("EVENTSTREAMING_")
        },
    )
    assert settings.metrics_port != 0, "metrics are on in the image"
    assert exposed == {settings.port, settings.metrics_port}


def test_entrypoint_is_the_cli_and_the_healthcheck_asks_the_health_service(
    runtime: Stage,
) -> None:
    assert exec_form(runtime.one("ENTRYPOINT")) == ["eventstreaming"]
    assert exec_form(runtime.one("CMD")) == ["serve"]
    healthcheck = runtime.one("HEALTHCHECK")
    options, _, probe = healthcheck.partition("CMD")
    assert "--interval" in options
    assert "--timeout" in options
    assert exec_form(probe.strip())[:2] == ["eventstreaming", "health"]


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", "**/__pycache__", "tests"):
        assert entry in ignored


def test_dockerignore_keeps_what_the_image_copies(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for stage in dockerfile[1]
        for args in stage.all("COPY")
        for source in copy_sources(args)
    ]
    assert LOCK in copied
    for source in copied:
        path = PurePosixPath(source)
        for part in [path, *path.parents[:-1]]:
            for pattern in patterns:
                assert not fnmatch(str(part), pattern), f"{pattern} in .dockerignore drops {source}"


# -- requirements.lock ----------------------------------------------------------------------------
def test_lock_pins_every_requirement_to_one_version_with_hashes(lock: list[Locked]) -> None:
    assert lock
    names = [canonicalize_name(entry.requirement.name) for entry in lock]
    assert len(names) == len(set(names)), "one pin per package"
    for entry in lock:
        requirement = entry.requirement
        assert not requirement.url, requirement
        [specifier] = requirement.specifier
        assert specifier.operator == "==", requirement
        assert "*" not in specifier.version, requirement
        assert entry.hashes, f"{requirement} has no --hash"
        for value in entry.hashes:
            assert HASH.match(value), f"{requirement}: {value}"


def test_lock_holds_every_runtime_dependency_at_a_version_pyproject_allows(
    lock: list[Locked], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = image_marker_environment(dockerfile[0])
    locked = {
        canonicalize_name(entry.requirement.name): Version(
            next(iter(entry.requirement.specifier)).version
        )
        for entry in lock
    }
    dependencies = [Requirement(text) for text in project["dependencies"]]
    assert dependencies
    for dependency in dependencies:
        if dependency.marker and not dependency.marker.evaluate(environment):
            continue
        name = canonicalize_name(dependency.name)
        assert name in locked, f"{dependency} is not in {LOCK}: run {LOCK_SCRIPT}"
        assert dependency.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK} pins {name}=={locked[name]}, pyproject.toml wants {dependency}: "
            f"run {LOCK_SCRIPT}"
        )


def test_lock_names_the_script_that_regenerates_it() -> None:
    header = (ROOT / LOCK).read_text().splitlines()[:5]
    assert any(LOCK_SCRIPT in line for line in header if line.startswith("#")), header
    script = ROOT / LOCK_SCRIPT
    assert os.access(script, os.X_OK), f"{LOCK_SCRIPT} is not executable"
    text = script.read_text()
    assert "--generate-hashes" in text
    assert LOCK in text


# -- the image's commands, run directly ---------------------------------------------------------
@pytest.fixture
def image_process(runtime: Stage) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """ENTRYPOINT + CMD with the image's environment (ports moved to free ones)."""
    env = clean_env(
        **{k: v for k, v in image_env(runtime).items() if k.startswith("EVENTSTREAMING_")}
    )
    env.update(
        EVENTSTREAMING_HOST="127.0.0.1",
        EVENTSTREAMING_PORT=str(free_port()),
        EVENTSTREAMING_METRICS_PORT=str(free_port()),
    )
    entry = exec_form(runtime.one("ENTRYPOINT")) + exec_form(runtime.one("CMD"))
    assert entry[0] == "eventstreaming"
    with child_process([*command(), *entry[1:]], env) as process:
        yield process, env


def test_image_command_serves_and_its_healthcheck_passes(
    runtime: Stage, image_process: tuple[subprocess.Popen[bytes], dict[str, str]]
) -> None:
    process, env = image_process
    probe = exec_form(runtime.one("HEALTHCHECK").partition("CMD")[2].strip())

    def healthy() -> subprocess.CompletedProcess[str] | None:
        assert process.poll() is None, "the server exited"
        result = subprocess.run(
            [*command(), *probe[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=ROOT / "tests",
        )
        return result if result.returncode == 0 else None

    result = wait_until_sync(healthy)
    assert "SERVING" in result.stdout
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


# -- docker-compose.yml ----------------------------------------------------------------------------
def test_compose_runs_postgres_15_with_a_named_volume_and_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    assert PINNED_POSTGRES.match(postgres["image"]), postgres["image"]
    [volume] = postgres["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/var/lib/postgresql/data"
    assert name in compose["volumes"], "a named volume, declared at the top level"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with the defaults (no variables set)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_service_uses_postgres_once_it_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    service = services["eventstreaming"]
    env = {k: _interpolate(v) for k, v in _environment(service).items()}
    assert env["EVENTSTREAMING_STORAGE"] == "postgres"
    fields = {f"EVENTSTREAMING_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    settings = Settings(
        _env_file=None,
        **{  # type: ignore[call-arg, arg-type]
            k.removeprefix("EVENTSTREAMING_").lower(): v for k, v in env.items()
        },
    )
    dsn = urlsplit(settings.database_url.get_secret_value())
    postgres_env = {k: _interpolate(v) for k, v in _environment(services["postgres"]).items()}
    assert dsn.hostname == "postgres"
    assert dsn.username == postgres_env["POSTGRES_USER"]
    assert dsn.password == postgres_env["POSTGRES_PASSWORD"]
    assert dsn.path == f"/{postgres_env['POSTGRES_DB']}"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    published = {int(p.split(":")[-1]) for p in service["ports"]}
    assert published == {settings.port, settings.metrics_port}
    grace = float(str(service["stop_grace_period"]).removesuffix("s"))
    assert grace > settings.shutdown_grace_seconds, "docker stop must outwait the grace period"
    assert service["build"]["target"] == "runtime"


def test_compose_smoke_service_runs_the_smoke_script_against_the_service(
    compose: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    smoke = compose["services"]["smoke"]
    assert smoke["profiles"] == ["smoke"]
    target = smoke["build"]["target"]
    [stage] = [s for s in dockerfile[1] if s.name == target]
    assert exec_form(stage.one("ENTRYPOINT")) == ["/src/scripts/smoke.sh"]
    assert any("scripts/smoke.sh" in args for args in stage.all("COPY"))
    [grpcurl] = [
        word for _, words in pip_commands(stage, "install") for word in words if "grpcurl" in word
    ]
    assert "==" in grpcurl, f"pin {grpcurl}"
    service_env = {
        k: _interpolate(v) for k, v in _environment(compose["services"]["eventstreaming"]).items()
    }
    assert smoke["command"] == [f"eventstreaming:{service_env['EVENTSTREAMING_PORT']}"]
    assert smoke["depends_on"]["eventstreaming"]["condition"] == "service_healthy"


def test_readme_shows_compose_up_then_the_smoke_run() -> None:
    readme = (ROOT / "README.md").read_text()
    up = readme.find("docker compose up -d")
    smoke = readme.find("docker compose run --rm smoke")
    assert 0 <= up < smoke

"""Worker processes (``WORKERS`` > 1, PostgreSQL only): one supervisor and N server
processes sharing the gRPC port.

The supervisor (the process ``serve`` was started as) does the one-time work,
then starts the workers and looks after them:

- it refuses memory storage (each process would hold data of its own), checks
  that the port and the workers' metrics ports are free, and brings the schema up
  to date (or refuses pending migrations) once, on a connection of its own, so the
  workers start with migrations off and never queue on the migration lock;
- each worker is ``python -P -m server serve --worker I --worker-link FD``, the
  same package as the supervisor, with the supervisor's settings, a pool of its
  own, and ``grpc.so_reuseport`` on (only here: a single server keeps it off, so a
  taken port stops its start); the kernel spreads new connections over the
  workers' listening sockets;
- the link is one end of a socket pair: the worker writes ``ready`` on it once it
  serves, and shuts down (gracefully) when it reads the end of it, that is when
  the supervisor is gone, however it went;
- a worker that exits unexpectedly is started again after a pause that doubles
  from FIRST_RESTART_DELAY up to MAX_RESTART_DELAY (back to the first once the
  worker had served for STABLE_SECONDS), so a crash loop does not spin; a worker
  that cannot start at all the first time (its own message is on stderr) stops
  the others and the supervisor exits with that worker's exit code;
- SIGTERM or SIGINT is passed on to every worker; each drains as a single server
  does, within SHUTDOWN_GRACE_SECONDS, and the supervisor exits 0 once all have
  exited cleanly (SIGKILL for a worker still there EXIT_MARGIN_SECONDS after the
  grace period, and exit code 1).

Metrics: worker I serves its own ``/metrics`` on ``METRICS_PORT + I`` (counters
count that worker's calls; sum them). Retention runs in every worker; on
PostgreSQL one pass at a time takes the retention lock and the others skip theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server.listen import check_can_listen
from server.settings import Settings, StartupError
from storage.factory import prepare_schema

log = logging.getLogger(__name__)

#: Pause before the first restart of a worker that died; doubled after each quick
#: death up to MAX_RESTART_DELAY.
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: A worker that served this long before it died is restarted after the first pause.
STABLE_SECONDS = 60.0
#: How long after the grace period the supervisor waits for workers to close their
#: pools and exit before it kills them.
EXIT_MARGIN_SECONDS = 10.0
#: What a worker writes on its link once it serves.
READY = b"ready\n"
#: The directory holding the ``server`` package this process runs: workers import
#: the very same code, whatever their working directory holds.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def restart_delay(quick_deaths: int) -> float:
    """The pause before restarting a worker that died ``quick_deaths`` times in a
    row without serving for STABLE_SECONDS (1 for the first death)."""
    doublings = min(max(quick_deaths - 1, 0), 32)
    return min(FIRST_RESTART_DELAY * float(2**doublings), MAX_RESTART_DELAY)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# -- the worker's side -------------------------------------------------------------------
class WorkerLink:
    """A worker's end of its link to the supervisor."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None

    async def open(self, supervisor_gone: Callable[[], None]) -> None:
        """Start watching the link: ``supervisor_gone`` is called when it ends."""
        sock = socket.socket(fileno=self._fd)
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)

        async def watch() -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    pass
            log.warning("the supervisor is gone; shutting down")
            supervisor_gone()

        self._watch = asyncio.create_task(watch(), name="supervisor-link")

    async def ready(self) -> None:
        """Tell the supervisor this worker serves."""
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                self._writer.write(READY)
                await self._writer.drain()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


# -- the supervisor's side ---------------------------------------------------------------
@dataclass
class Worker:
    """One running worker process, as the supervisor sees it."""

    index: int
    process: asyncio.subprocess.Process
    link: asyncio.StreamReader
    link_writer: asyncio.StreamWriter
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return int(self.process.pid)


def pick_port(host: str) -> int:
    """A free port on ``host`` (for PORT=0: every worker must listen on the same one)."""
    bare = host.strip("[]")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        bare or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(sockaddr)
        return int(sock.getsockname()[1])


def check_worker_ports(settings: Settings) -> int:
    """Refuse what cannot work with several workers, before anything is bound or
    the database reached; returns the gRPC port the workers share."""
    count = settings.workers
    if settings.storage == "memory":
        raise StartupError(
            "workers",
            f"{count} worker processes cannot share in-memory storage (each would hold "
            "its own separate data); use EVENTSTREAMING_STORAGE=postgres, or "
            "EVENTSTREAMING_WORKERS=1",
        )
    host = settings.host
    check_can_listen(host, settings.port, "port")
    port = settings.port or pick_port(host)
    first = settings.metrics_port
    if first:
        last = first + count - 1
        if last > 65535:
            raise StartupError(
                "metrics_port",
                f"worker I serves metrics on METRICS_PORT + I: {first}..{last} goes beyond 65535",
            )
        if first <= port <= last:
            raise StartupError(
                "metrics_port",
                f"worker I serves metrics on METRICS_PORT + I: {first}..{last} "
                f"includes the gRPC port {port}",
            )
        for index in range(count):
            try:
                check_can_listen(host, first + index, "metrics_port")
            except StartupError as exc:
                if index == 0 or exc.setting != "metrics_port":
                    raise
                raise StartupError(
                    "metrics_port", f"{exc.problem} (worker {index}'s, METRICS_PORT + {index})"
                ) from None
    return port


class Supervisor:
    """Runs ``settings.workers`` workers until told to stop (see the module doc)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.workers: dict[int, Worker] = {}
        #: Set when the workers are to stop (a signal, or a worker that cannot start).
        self._stop = asyncio.Event()
        #: Slots whose worker has served at least once.
        self._served: set[int] = set()
        #: The exit code of a worker that could not start (the supervisor's own).
        self._failed_code: int | None = None
        #: Exit codes of workers stopped at the end.
        self._final_codes: list[int] = []

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, signum: int | None = None) -> None:
        if signum is not None and not self._stop.is_set():
            log.info(
                "%s: stopping %d worker(s); calls in progress get %g s",
                signal.Signals(signum).name,
                len(self.workers),
                self.settings.shutdown_grace_seconds,
            )
        self._stop.set()
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGTERM)

    async def run(self) -> int:
        count = self.settings.workers
        log.info(
            "starting %d worker processes on %s:%d (SO_REUSEPORT)",
            count,
            self.settings.host,
            self.port,
            extra={"workers": count, "port": self.port},
        )
        slots = [asyncio.create_task(self._keep(i), name=f"worker-{i}") for i in range(count)]
        await self._stop.wait()
        bound = self.settings.shutdown_grace_seconds + EXIT_MARGIN_SECONDS
        _, late = await asyncio.wait(slots, timeout=bound)
        if late:
            for worker in list(self.workers.values()):
                log.error(
                    "worker %d (pid %d) still running %g s after SIGTERM; killing it",
                    worker.index,
                    worker.pid,
                    bound,
                    extra={"worker": worker.index, "pid": worker.pid},
                )
                self._signal(worker, signal.SIGKILL)
            await asyncio.wait(late)
            self._final_codes.append(-signal.SIGKILL)
        for slot in slots:
            slot.result()  # a slot raises only on a bug: let it be seen
        if self._failed_code is not None:
            return self._failed_code
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        if all(code in clean for code in self._final_codes):
            log.info("all workers stopped")
            return 0
        return 1

    async def _keep(self, index: int) -> None:
        """Keep worker ``index`` running until the stop; a failure to start a
        process at all (no Python to run, no file descriptors left) stops them all."""
        try:
            await self._keep_running(index)
        except Exception:
            log.exception("worker %d could not be started; stopping", index)
            if self._failed_code is None:
                self._failed_code = 1
            self.request_stop()

    async def _keep_running(self, index: int) -> None:
        quick_deaths = 0
        while not self._stop.is_set():
            worker = await self._spawn(index)
            ready = await self._wait_ready(worker)
            code = await worker.process.wait()
            del self.workers[index]
            worker.link_writer.close()
            if self._stop.is_set():
                self._final_codes.append(code)
                return
            if not ready and index not in self._served:
                log.error(
                    "worker %d (pid %d) could not start (it %s); stopping",
                    index,
                    worker.pid,
                    describe_exit(code),
                    extra={"worker": index, "pid": worker.pid, "exit_code": code},
                )
                self._failed_code = code if code > 0 else 1
                self.request_stop()
                return
            served_for = time.monotonic() - worker.started
            quick_deaths = 1 if ready and served_for >= STABLE_SECONDS else quick_deaths + 1
            delay = restart_delay(quick_deaths)
            log.error(
                "worker %d (pid %d) %s after %.1f s%s; restarting it in %.1f s",
                index,
                worker.pid,
                describe_exit(code),
                served_for,
                "" if ready else " without serving",
                delay,
                extra={"worker": index, "pid": worker.pid, "exit_code": code},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _spawn(self, index: int) -> Worker:
        ours, theirs = socket.socketpair()
        try:
            metrics_port = self.settings.metrics_port + index if self.settings.metrics_port else 0
            python_path = os.pathsep.join(
                p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # no working directory on sys.path: the supervisor's own package
                "-m",
                "server",
                "serve",
                "--worker",
                str(index),
                "--worker-link",
                str(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={
                    **os.environ,
                    "PYTHONPATH": python_path,
                    "EVENTSTREAMING_PORT": str(self.port),
                    "EVENTSTREAMING_METRICS_PORT": str(metrics_port),
                    # Migrated once by the supervisor: a worker checks, never migrates.
                    "EVENTSTREAMING_AUTO_MIGRATE": "false",
                },
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        link, link_writer = await asyncio.open_unix_connection(sock=ours)
        worker = Worker(index, process, link, link_writer)
        self.workers[index] = worker
        if self._stop.is_set():  # the stop came while it was being started
            self._signal(worker, signal.SIGTERM)
        return worker

    async def _wait_ready(self, worker: Worker) -> bool:
        """Whether the worker reported that it serves (False: it exited first)."""
        try:
            line = await worker.link.readline()
        except ConnectionError:
            return False
        if line != READY:
            return False
        first = worker.index not in self._served
        self._served.add(worker.index)
        log.info(
            "worker %d (pid %d) serving",
            worker.index,
            worker.pid,
            extra={"worker": worker.index, "pid": worker.pid},
        )
        if first and len(self._served) == self.settings.workers:
            log.info(
                "all %d workers serving on %s:%d",
                self.settings.workers,
                self.settings.host,
                self.port,
                extra={"workers": self.settings.workers, "port": self.port},
            )
        return True

    @staticmethod
    def _signal(worker: Worker, signum: int) -> None:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)


async def supervise(settings: Settings) -> int:
    """``serve`` with WORKERS > 1: the one-time work, then the workers until
    SIGTERM/SIGINT; returns the exit code."""
    port = check_worker_ports(settings)
    supervisor = Supervisor(settings, port)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.request_stop, signum)
    await prepare_schema(
        settings.database_url.get_secret_value(),
        auto_migrate=settings.auto_migrate,
        **settings.database_timeouts(),
    )
    if supervisor.stopping:  # a signal came during the migrations
        return 0
    return await supervisor.run()

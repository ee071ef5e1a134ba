"""The retention task: enforces every persistent stream's retention policy.

Each pass asks the store to delete, per persistent stream, the events older than
its ``retention_max_age`` and all but its newest ``retention_max_count``. On
PostgreSQL only one replica enforces at a time (the others find the pass taken and
skip it), and a large backlog goes in short batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server.settings import Settings
from server.stores import build_store
from storage.errors import StorageError
from storage.interface import EventStore
from storage.records import RetentionReport

log = logging.getLogger(__name__)


async def run_retention_pass(store: EventStore) -> RetentionReport:
    """One pass, logged."""
    started = time.perf_counter()
    report = await store.enforce_retention()
    elapsed_ms = (time.perf_counter() - started) * 1000
    if report.events_deleted:
        log.info(
            "retention pass deleted %d event(s) in %.1f ms",
            report.events_deleted,
            elapsed_ms,
            extra={
                "streams_examined": report.streams_examined,
                "events_deleted": report.events_deleted,
                "duration_ms": round(elapsed_ms, 1),
            },
        )
    return report


class RetentionTask:
    """Runs a retention pass every ``interval`` seconds until stopped."""

    def __init__(self, store: EventStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await run_retention_pass(self.store)
            except StorageError as exc:
                log.warning(
                    "retention pass failed: %s; retrying in %.0f s",
                    exc,
                    self.interval,
                    extra={"error": type(exc).__name__},
                )
            except Exception:
                log.exception("retention pass failed unexpectedly")
            self.passes += 1


async def run_once(settings: Settings) -> int:
    """``eventstreaming retention run-once``: one pass, then a one-line summary."""
    if settings.storage == "memory":
        print("in-memory storage keeps nothing between processes: nothing to enforce")
        return 0

    store = build_store(settings, pool_min_size=1, pool_max_size=2)
    await store.start()
    try:
        report = await run_retention_pass(store)
    finally:
        await store.close()
    print(
        f"retention: {report.streams_examined} stream(s) with a retention policy examined, "
        f"{report.events_deleted} event(s) deleted"
    )
    return 0

"""Cross-replica wake-ups over LISTEN/NOTIFY.

Every server process sharing a database keeps one dedicated connection that
LISTENs on one channel and also sends, at most once per short interval, a single
``pg_notify`` naming every stream written since the last one. Keeping NOTIFY out of
the append's transaction matters: PostgreSQL serialises the commits of
transactions that notified (a global lock at commit), which would cap appends.

A notification received for a stream calls ``signals.notify(name)``, exactly as a
local write does, so long polls and subscriptions on any replica wake up. When the
connection is lost, the notifier reconnects and wakes every waiter (they re-read
storage, so nothing announced meanwhile is missed).

A notification can still be lost without the connection dropping: a process killed
between its commit and its notification never sends it. So while anyone in this
process waits, the notifier *watches*: every ``watch_interval`` one query over all
the streams waited on (not one per waiter) reports each stream's length and whether
a queue has a visible message at its head, and the streams that changed since the
last look are notified. Idle waiters cost that one query per interval, whatever
their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from storage.postgres.database import Connection
from storage.postgres.errors import DRIVER_ERRORS
from storage.signals import StreamSignals

log = logging.getLogger(__name__)

CHANNEL = "event_streaming"
NOTIFY_SQL = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"
PING_SQL = "SELECT 1"
#: Per waited stream: its next offset (NULL: gone), and for a queue whether a
#: message is deliverable: ready, or timed and due (the two partial indexes of
#: migrations/006_queue_features.sql; never a walk of the queue). For the global
#: log ("$all", no stream row): its head position.
WATCH_SQL = """
SELECT w.name,
       CASE WHEN w.name = '$all' THEN (SELECT last_position FROM event_streaming.log_head)
            ELSE s.next_offset END AS next_offset,
       s.stream_type = 2 AND (
           EXISTS (SELECT 1 FROM event_streaming.queue_messages m
                    WHERE m.stream_id = s.stream_id AND m.state = 0)
           OR EXISTS (SELECT 1 FROM event_streaming.queue_messages m
                       WHERE m.stream_id = s.stream_id AND m.state = 1
                         AND m.visible_at <= now())) AS visible
  FROM unnest($1::text[]) AS w(name)
  LEFT JOIN event_streaming.streams s ON s.stream_name = w.name
"""
#: PostgreSQL refuses payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7900
APPLICATION_NAME = "eventstreaming-notifier"


def payloads(sender: str, names: Iterable[str]) -> list[str]:
    """``sender`` and the names, one per line, in as few payloads as fit the limit."""
    result: list[str] = []
    lines = [sender]
    size = len(sender.encode())
    for name in sorted(names):
        grown = size + 1 + len(name.encode())
        if grown > MAX_PAYLOAD_BYTES and len(lines) > 1:
            result.append("\n".join(lines))
            lines, grown = [sender], len(sender.encode()) + 1 + len(name.encode())
        lines.append(name)
        size = grown
    if len(lines) > 1:
        result.append("\n".join(lines))
    return result


class PostgresNotifier:
    """One process's LISTEN/NOTIFY link for stream wake-ups."""

    def __init__(
        self,
        dsn: str,
        signals: StreamSignals,
        *,
        interval: float = 0.003,
        ping_interval: float = 10.0,
        watch_interval: float = 1.0,
        reconnect_delay: float = 0.5,
    ) -> None:
        self._dsn = dsn
        self._signals = signals
        self._interval = interval
        self._ping_interval = ping_interval
        self._watch_interval = watch_interval
        self._reconnect_delay = reconnect_delay
        #: What the last watch saw of each waited stream.
        self._watched: dict[str, int | None] = {}
        #: Watch queries run (for observation and tests).
        self.watches = 0
        #: Marks this process's own notifications, which it need not act on.
        self._sender = uuid.uuid4().hex
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_sent = 0.0

    async def start(self) -> None:
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._run(), name="postgres-notifier")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # Best effort: replicas still hear of the last writes of this one.
            with contextlib.suppress(Exception):
                await self._send(conn, timeout=1.0)
            with contextlib.suppress(Exception):
                await conn.close(timeout=2.0)

    def announce(self, stream_name: str) -> None:
        """Queue a committed write to ``stream_name`` for the next notification."""
        self._dirty.add(stream_name)
        self._wake.set()

    # -- connection ----------------------------------------------------------------
    async def _connect(self) -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _on_terminated(self, conn: Connection) -> None:
        self._wake.set()

    def _on_notification(self, conn: Connection, pid: int, channel: str, payload: object) -> None:
        sender, _, names = str(payload).partition("\n")
        if sender == self._sender:
            return
        for name in names.split("\n"):
            if name:
                self._signals.notify(name)

    # -- the background task -------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                conn = self._conn
                if conn is None or conn.is_closed():
                    conn = self._conn = await self._connect()
                    log.info("notification connection re-established")
                    # Anything announced while we were away went unheard: every
                    # waiter looks at storage again.
                    self._signals.notify_all()
                await self._serve(conn)
            except DRIVER_ERRORS as exc:
                log.warning(
                    "notification connection lost (%s); reconnecting",
                    type(exc).__name__,
                    extra={"error": type(exc).__name__},
                )
            except Exception:
                log.exception("notification connection failed; reconnecting")
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.terminate()
            await asyncio.sleep(self._reconnect_delay)

    async def _serve(self, conn: asyncpg.Connection[Any]) -> None:
        """Send coalesced notifications until the connection is lost; watch the
        waited streams meanwhile."""
        next_watch = time.monotonic() + self._watch_interval
        while not conn.is_closed():
            waiting = bool(self._signals.waited())
            timeout = next_watch - time.monotonic() if waiting else self._ping_interval
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                # a cancel that arrives as the event is set, and close() would hang.
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._wake.wait()
            except TimeoutError:
                if waiting:
                    await self._watch(conn)
                    next_watch = time.monotonic() + self._watch_interval
                else:
                    # An idle connection can die silently; a ping finds out.
                    await conn.execute(PING_SQL)
                continue
            self._wake.clear()
            if not self._dirty or conn.is_closed():
                continue
            # At most one notification per interval: a burst of commits shares one.
            pause = self._last_sent + self._interval - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            await self._send(conn)
        raise asyncpg.InterfaceError("notification connection closed")

    async def _watch(self, conn: asyncpg.Connection[Any]) -> None:
        """Notify the waited streams that changed since the last watch (or that this
        watch sees for the first time, or that have a visible message waiting)."""
        names = self._signals.waited()
        rows = await conn.fetch(WATCH_SQL, names)
        self.watches += 1
        seen: dict[str, int | None] = {}
        for row in rows:
            name, length = row["name"], row["next_offset"]
            seen[name] = length
            if name not in self._watched or self._watched[name] != length or row["visible"]:
                self._signals.notify(name)
        self._watched = seen

    async def _send(self, conn: asyncpg.Connection[Any], timeout: float | None = None) -> None:
        names, self._dirty = self._dirty, set()
        if not names:
            return
        try:
            await conn.execute(NOTIFY_SQL, CHANNEL, payloads(self._sender, names), timeout=timeout)
        except BaseException:
            self._dirty |= names
            raise
        self._last_sent = time.monotonic()

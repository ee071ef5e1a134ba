"""Group commit: appends that arrive while earlier ones are being written are
written together, in one transaction and one round trip.

A lone append goes at once: nothing waits for company. Calls pile up only behind
the writes in flight (at most ``max_in_flight`` at a time), and the next write takes
all that piled up, bounded by events and bytes. Each call still succeeds or fails
on its own (event_streaming.append_calls decides every call separately, in the
order they arrived), so one call's stale expectation or duplicate never fails its
neighbours; what fails a whole group is what fails a transaction (a lost
connection, a database going away), and every call of it is told so.

Calls that touch the same stream (or the same consumer checkpoint) are written in
the order they were submitted: a call waits while a group in flight touches one
of its streams, and later calls on those streams wait behind it. So an
AppendSession's requests to one stream apply in the order sent, and two groups
never contend for a stream's lock.

Why it pays: appends to the global log commit one transaction at a time (the head
of the log is held from the write to the commit's flush, see
migrations/005_global_log.sql), so a transaction per append caps the database at
one append per flush. Grouped, one flush carries every append that was waiting.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field

from storage.records import AppendResult, ConsumerCheckpoint, StreamAppend

#: Writes in flight at once: one being written, one gathering behind it and sent
#: as soon as the head of the log is free (no round trip lost between groups).
MAX_IN_FLIGHT = 2
#: Bounds of one group (a call larger than them goes alone).
MAX_GROUP_EVENTS = 10_000
MAX_GROUP_BYTES = 16 * 1024 * 1024


@dataclass
class Call:
    """One AppendToStream(s) call waiting for its group."""

    appends: Sequence[StreamAppend]
    checkpoint: ConsumerCheckpoint | None
    events: int
    size: int
    #: What orders it among other calls: its streams, and its checkpoint's
    #: (stream, consumer group).
    keys: frozenset[Hashable]
    done: asyncio.Future[tuple[AppendResult, ...]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Write = Callable[[Sequence[Call]], Awaitable[None]]


def _consume(done: asyncio.Future[tuple[AppendResult, ...]]) -> None:
    if not done.cancelled():
        done.exception()


class GroupCommit:
    """Feeds calls to ``write`` in groups; ``write`` settles each call's future."""

    def __init__(
        self,
        write: Write,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_events: int = MAX_GROUP_EVENTS,
        max_bytes: int = MAX_GROUP_BYTES,
    ) -> None:
        self._write = write
        self._max_in_flight = max_in_flight
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._waiting: collections.deque[Call] = collections.deque()
        self._in_flight = 0
        #: The keys of the calls in flight.
        self._busy: collections.Counter[Hashable] = collections.Counter()
        #: True when every waiting call is held back behind a call in flight;
        #: then ``_held`` has their keys, and a new call that shares one is held
        #: too without looking at the others again.
        self._stuck = False
        self._held: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Groups written and calls they carried (for observation and tests).
        self.groups = 0
        self.calls = 0

    async def submit(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None
    ) -> tuple[AppendResult, ...]:
        """The call's results, once its group has committed."""
        if self._in_flight == 0 and not self._waiting:
            # Nothing to wait for or to join: written here and now, as a group of
            # one (no task, no hop through the loop). Calls that arrive meanwhile
            # form the next group; a caller that gives up takes only its own call
            # with it.
            call = self._call(appends, checkpoint)
            self._in_flight += 1
            self._busy.update(call.keys)
            await self._run([call])
            return call.done.result()
        # A caller that gives up leaves its call to be written or dropped: once
        # its group is on its way nothing can take it back (it commits whole, or
        # not at all).
        return await asyncio.shield(self.hand_on(appends, checkpoint))

    def hand_on(
        self, appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None
    ) -> asyncio.Future[tuple[AppendResult, ...]]:
        """Queue the call and return its future (settled when its group is
        written); calls handed on one after the other keep their order on each
        of their keys."""
        call = self._call(appends, checkpoint)
        keys = call.keys
        self._waiting.append(call)
        if self._stuck and not (self._held.isdisjoint(keys) and self._busy.keys().isdisjoint(keys)):
            self._held |= keys  # behind a held call or one in flight: nothing to start
        else:
            self._start()
        return call.done

    @staticmethod
    def _call(appends: Sequence[StreamAppend], checkpoint: ConsumerCheckpoint | None) -> Call:
        keys: set[Hashable] = {a.stream_name for a in appends}
        if checkpoint is not None:
            keys.add((checkpoint.stream_name, checkpoint.consumer_group))
        call = Call(
            appends,
            checkpoint,
            sum(len(a.events) for a in appends),
            sum(e.size for a in appends for e in a.events),
            frozenset(keys),
        )
        # Whatever becomes of a caller that gave up, its call's outcome is taken.
        call.done.add_done_callback(_consume)
        return call

    def _start(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            group = self._take()
            if not group:
                break
            self._in_flight += 1
            for call in group:
                self._busy.update(call.keys)
            task = asyncio.create_task(self._run(group), name="group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Call]:
        """The calls of the next group, oldest first, within its bounds, passing
        over those held back behind a call in flight (or behind a call held)."""
        group: list[Call] = []
        held: list[Call] = []
        held_keys: set[Hashable] = set()
        busy = self._busy
        events = size = 0
        while self._waiting:
            call = self._waiting.popleft()
            if (busy or held_keys) and any(k in busy or k in held_keys for k in call.keys):
                held.append(call)
                held_keys |= call.keys
                continue
            too_many = events + call.events > self._max_events
            if group and (too_many or size + call.size > self._max_bytes):
                self._waiting.appendleft(call)
                break
            group.append(call)
            events += call.events
            size += call.size
        self._waiting.extendleft(reversed(held))
        self._stuck = not group and bool(held)
        self._held = held_keys if self._stuck else set()
        return group

    async def _run(self, group: list[Call]) -> None:
        try:
            await self._write(group)
            self.groups += 1
            self.calls += len(group)
        except BaseException as exc:
            for call in group:
                if call.done.done():
                    continue
                if isinstance(exc, Exception):
                    call.done.set_exception(exc)
                else:
                    call.done.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            for call in group:
                self._busy.subtract(call.keys)
            self._busy = +self._busy  # drop the keys no longer in flight
            self._stuck = False
            self._start()

    async def close(self) -> None:
        """Stop: the groups still in flight are cancelled (rolled back whole: the
        server closes storage only after its grace period, so whatever is still
        being written has outlasted it), and calls still waiting with them."""
        while self._waiting:
            self._waiting.popleft().done.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

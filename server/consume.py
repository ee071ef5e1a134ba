"""Consume streams: queue messages pushed to a consumer under flow control, with
its acks, nacks and extends answered on the same stream.

A stream runs three tasks beside the call itself:

- the *reader* takes the client's requests (already validated) into an inbox;
- the *processor* answers them in the order sent, applying consecutive acks in
  one storage call (a client acking message by message costs one statement per
  burst, not one per message), and on a clean half-close releases what the
  stream still holds;
- the *deliverer* leases messages whenever the stream holds fewer than
  ``max_outstanding``, and otherwise waits. It is a waiter like a long poll: it
  looks at the queue once (storage ``lease_messages``) and then sleeps until a
  write to the queue (storage.signals: local writes, and other replicas'
  notifications), its own next-visible timer (a lease or delay running out), or
  room in its window. Idle, it costs nothing.

The streams of one queue in one process share a :class:`QueueGate`: a stream
that was woken waits for the looks of the others that began after its wake-up,
and skips its own when one of them found the queue empty. One enqueue wakes
every idle stream, but one of them looks, and the others look (all at once)
only if it found more than it could take. A stream that just leased looks again
at once, without waiting.

Everything goes out through one bounded outbox that the call drains, so a client
that stops reading pauses delivery: the stream then holds one storage batch (bounded
in bytes by the store) and the messages in the outbox.

Each delivery is remembered by its receipt: an ack, nack or extend by event id of
a message delivered on this stream acts on that delivery only (a stale ack cannot
touch a later delivery of the same message, even to the same consumer id). A
message stops counting against ``max_outstanding`` when it is acked, nacked,
found gone or held elsewhere, or when its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from server.errors import ServerShuttingDown
from server.metrics import Metrics
from server.validation import (
    MAX_ACK_IDS,
    ConsumeAckArgs,
    ConsumeArgs,
    ConsumeCommand,
    ConsumeExtendArgs,
    ConsumeNackArgs,
)
from storage.errors import MessageNotFound, MessageNotHeld
from storage.interface import EventStore
from storage.receipts import Receipt
from storage.records import (
    AckFailure,
    AckFailureReason,
    AckResult,
    MessageRef,
    QueueMessage,
    event_id_of,
)
from storage.signals import Look, StreamSignals

#: Messages leased per look (storage also bounds a batch in bytes).
LEASE_BATCH = 500
#: Items waiting to be sent, and requests waiting to be answered.
OUTBOX_SIZE = 64
INBOX_SIZE = 64


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to one ack, nack or extend."""

    request_id: int
    result: AckResult
    #: Extend only, when it succeeded.
    visible_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages leased together, sent together (ConsumeStart.max_batch > 1)."""

    messages: tuple[QueueMessage, ...]


ConsumeItem = QueueMessage | Batch | CommandResult


class _Finished:
    """Put in the outbox when the stream is done (with the error that ended it)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


_END_OF_REQUESTS = object()


class QueueGate:
    """The looks of one queue's Consume streams in this process: those under way,
    and when the last look that found the queue empty began (and what it said of
    the next message due).

    A stream may skip its look when such a look began after the stream's wake-up
    event was made: every write committed before that look began was seen by it,
    and every write after the event was made sets the event. The streams of one
    queue share the event (storage.signals), so the gate notes when it first saw
    each one (no earlier than it was made: the safe side)."""

    def __init__(self) -> None:
        self.users = 0
        #: Looks under way: when each began, and an event set when it is done.
        self.under_way: list[tuple[float, asyncio.Event]] = []
        #: Loop time at which the latest look that came back short began.
        self.drained_at = float("-inf")
        #: Loop time at which that look said a message may next become visible.
        self.next_visible_at: float | None = None
        self._event: asyncio.Event | None = None
        self._event_seen_at = float("-inf")

    def since(self, waiter: asyncio.Event, now: float) -> float:
        """When the gate first saw the wake-up event ``waiter``."""
        if waiter is not self._event:
            self._event, self._event_seen_at = waiter, now
        return self._event_seen_at

    def drained_since(self, moment: float) -> bool:
        return self.drained_at >= moment

    def begun_since(self, moment: float) -> list[asyncio.Event]:
        """The looks under way that began at ``moment`` or later."""
        return [done for began, done in self.under_way if began >= moment]

    def record(self, began: float, look: Look[QueueMessage], asked: int) -> None:
        if look.again or len(look.found) >= asked:
            return
        self.drained_at = max(self.drained_at, began)
        self.next_visible_at = None if look.next_visible is None else began + look.next_visible


class Consumers:
    """Every Consume stream of one server. ``close()`` (at shutdown) ends them all
    with UNAVAILABLE; their messages are left to their leases."""

    def __init__(self, store: EventStore, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.active: weakref.WeakSet[ConsumeStream] = weakref.WeakSet()
        self.gates: dict[str, QueueGate] = {}
        self.closed = False

    async def consume(
        self, args: ConsumeArgs, commands: AsyncIterator[ConsumeCommand]
    ) -> AsyncIterator[ConsumeItem]:
        """The items of one Consume call: deliveries and answers."""
        if self.closed:
            raise ServerShuttingDown
        gate = self.gates.get(args.stream_name)
        if gate is None:
            gate = self.gates[args.stream_name] = QueueGate()
        gate.users += 1
        stream = ConsumeStream(self.store, args, gate)
        self.active.add(stream)
        try:
            dequeued = None if self.metrics is None else self.metrics.messages_dequeued
            async for item in stream.items(commands):
                if dequeued is not None and isinstance(item, QueueMessage | Batch):
                    dequeued.inc(1 if isinstance(item, QueueMessage) else len(item.messages))
                yield item
        finally:
            self.active.discard(stream)
            gate.users -= 1
            if gate.users == 0 and self.gates.get(args.stream_name) is gate:
                del self.gates[args.stream_name]

    def close(self) -> None:
        self.closed = True
        for stream in list(self.active):
            stream.shut_down()


class ConsumeStream:
    """One consumer's stream on one queue."""

    def __init__(self, store: EventStore, args: ConsumeArgs, gate: QueueGate | None = None) -> None:
        self.store = store
        self.args = args
        self.gate = gate or QueueGate()
        #: The latest delivery made on this stream of each message it holds.
        self.outstanding: dict[UUID, QueueMessage] = {}
        #: Deliveries made, storage looks taken, and looks skipped because a fresh
        #: one found the queue empty (for observation and tests).
        self.delivered = 0
        self.looks = 0
        self.skipped = 0
        self._outbox: asyncio.Queue[ConsumeItem | _Finished] = asyncio.Queue(OUTBOX_SIZE)
        self._inbox: asyncio.Queue[object] = asyncio.Queue(INBOX_SIZE)
        #: Set when the window may have room, or the stream is stopping.
        self._nudge = asyncio.Event()
        self._stopping = False
        self._deliverer: asyncio.Task[None] | None = None

    # -- the call ----------------------------------------------------------------------
    async def items(self, commands: AsyncIterator[ConsumeCommand]) -> AsyncIterator[ConsumeItem]:
        self._deliverer = asyncio.create_task(self._deliver(), name="consume-deliverer")
        tasks = [
            asyncio.create_task(self._read(commands), name="consume-reader"),
            asyncio.create_task(self._process(), name="consume-processor"),
            self._deliverer,
        ]
        try:
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Finished):
                    if item.error is not None:
                        raise item.error
                    return
                if self._stopping and isinstance(item, QueueMessage | Batch):
                    continue  # leased as the client closed: released, never sent
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def shut_down(self) -> None:
        """End the stream with UNAVAILABLE (the server is stopping)."""
        self._finish(ServerShuttingDown())

    def _finish(self, error: BaseException | None = None) -> None:
        """End the call: at once with an error, or after what is queued."""
        self._stopping = True
        self._nudge.set()
        if error is None:
            return
        # The outbox may be full of items nobody will send: make room.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(_Finished(error))

    # -- requests --------------------------------------------------------------------------
    async def _read(self, commands: AsyncIterator[ConsumeCommand]) -> None:
        try:
            async for command in commands:
                await self._inbox.put(command)
        except Exception as exc:  # an invalid request, or the client went away
            self._finish(exc)
            return
        await self._inbox.put(_END_OF_REQUESTS)

    async def _process(self) -> None:
        """Answer the requests in order; at their end, release and finish."""
        pending: object | None = None
        try:
            while True:
                command = pending if pending is not None else await self._inbox.get()
                pending = None
                if command is _END_OF_REQUESTS:
                    break
                if isinstance(command, ConsumeAckArgs):
                    batch = [command]
                    count = len(command.targets)
                    while not self._inbox.empty():
                        following = self._inbox.get_nowait()
                        if (
                            isinstance(following, ConsumeAckArgs)
                            and count + len(following.targets) <= MAX_ACK_IDS
                        ):
                            batch.append(following)
                            count += len(following.targets)
                        else:
                            pending = following
                            break
                    for answer in await self._ack(batch):
                        await self._outbox.put(answer)
                elif isinstance(command, ConsumeNackArgs):
                    await self._outbox.put(await self._nack(command))
                elif isinstance(command, ConsumeExtendArgs):
                    await self._outbox.put(await self._extend(command))
            await self._close_cleanly()
        except Exception as exc:
            self._finish(exc)

    async def _close_cleanly(self) -> None:
        """The client half-closed: stop delivering, give back what the stream holds
        (visible again at once, the attempt counted), then end the call."""
        self._stopping = True
        self._nudge.set()
        if self._deliverer is not None:
            # It ends after its current look, whose leases are then ours to release.
            await self._deliverer
        held = [m.receipt for m in self.outstanding.values()]
        self.outstanding.clear()
        if held:
            await self.store.release(self.args.stream_name, self.args.consumer_id, held)
        await self._outbox.put(_Finished())

    # -- acks, nacks, extends -------------------------------------------------------------
    def _fenced(self, target: MessageRef) -> MessageRef:
        """An id of a message delivered on this stream stands for that delivery."""
        if isinstance(target, Receipt):
            return target
        delivery = self.outstanding.get(target)
        return target if delivery is None else delivery.receipt

    def _settle(self, target: MessageRef) -> None:
        """The delivery ``target`` names is no longer held by this stream."""
        delivery = self.outstanding.get(event_id_of(target))
        if delivery is not None and (not isinstance(target, Receipt) or delivery.receipt == target):
            del self.outstanding[delivery.event.event_id]
            self._nudge.set()

    async def _ack(self, batch: Sequence[ConsumeAckArgs]) -> list[CommandResult]:
        """Consecutive acks in one storage call, answered one by one as if applied
        in turn (a message acknowledged by an earlier request of the batch is not
        found by a later one)."""
        fenced = {t: self._fenced(t) for command in batch for t in command.targets}
        result = await self.store.acknowledge(
            self.args.stream_name, self.args.consumer_id, list(dict.fromkeys(fenced.values()))
        )
        acknowledged = set(result.acknowledged)
        failures = {(f.event_id, f.receipt): f.reason for f in result.failed}
        for target in fenced.values():
            self._settle(target)
        claimed: set[UUID] = set()
        answers: list[CommandResult] = []
        for command in batch:
            done: list[UUID] = []
            failed: list[AckFailure] = []
            for target in dict.fromkeys(command.targets):
                event_id = event_id_of(target)
                as_named = target if isinstance(target, Receipt) else None
                used = fenced[target]
                reason = failures.get((event_id, used if isinstance(used, Receipt) else None))
                if reason is None and event_id in acknowledged and event_id not in claimed:
                    claimed.add(event_id)
                    done.append(event_id)
                else:
                    failed.append(
                        AckFailure(event_id, reason or AckFailureReason.NOT_FOUND, as_named)
                    )
            answers.append(CommandResult(command.request_id, AckResult(tuple(done), tuple(failed))))
        return answers

    async def _nack(self, command: ConsumeNackArgs) -> CommandResult:
        target = self._fenced(command.target)
        outcome = await self._one(
            target,
            command.target,
            self.store.nack(
                self.args.stream_name,
                self.args.consumer_id,
                target,
                command.delay,
                command.reason,
            ),
        )
        self._settle(target)
        return CommandResult(command.request_id, outcome)

    async def _extend(self, command: ConsumeExtendArgs) -> CommandResult:
        target = self._fenced(command.target)
        until: list[datetime] = []

        async def extend() -> None:
            until.append(
                await self.store.extend_visibility(
                    self.args.stream_name,
                    self.args.consumer_id,
                    target,
                    command.visibility_timeout,
                )
            )

        outcome = await self._one(target, command.target, extend())
        if until:
            delivery = self.outstanding.get(event_id_of(target))
            if delivery is not None:
                self.outstanding[delivery.event.event_id] = _with_lease(delivery, until[0])
            return CommandResult(command.request_id, outcome, until[0])
        self._settle(target)
        return CommandResult(command.request_id, outcome)

    @staticmethod
    async def _one(target: MessageRef, as_named: MessageRef, call: Awaitable[None]) -> AckResult:
        """The outcome of a nack or extend of one message, as an AckResult."""
        event_id = event_id_of(target)
        receipt = as_named if isinstance(as_named, Receipt) else None
        try:
            await call
        except MessageNotFound:
            return AckResult((), (AckFailure(event_id, AckFailureReason.NOT_FOUND, receipt),))
        except MessageNotHeld:
            return AckResult((), (AckFailure(event_id, AckFailureReason.NOT_HELD, receipt),))
        return AckResult((event_id,), ())

    # -- deliveries ------------------------------------------------------------------------
    def _room(self) -> tuple[int, float | None]:
        """How many more messages the window takes (dropping deliveries whose lease
        has run out), and the seconds until the next of those still held runs out."""
        now = datetime.now(UTC)
        for event_id, delivery in list(self.outstanding.items()):
            if delivery.visible_until <= now:
                del self.outstanding[event_id]
        next_end = min((d.visible_until for d in self.outstanding.values()), default=None)
        room = self.args.max_outstanding - len(self.outstanding)
        return room, None if next_end is None else (next_end - now).total_seconds()

    async def _look(self, room: int, since: float | None) -> Look[QueueMessage] | None:
        """A look at the queue for up to ``room`` messages. A stream woken by an
        event the gate first saw at ``since`` first waits for the looks begun
        since then, and gets None (no look) when one of them found the queue empty
        (writes after it set the event again)."""
        gate, args = self.gate, self.args
        loop = asyncio.get_running_loop()
        while since is not None:
            if gate.drained_since(since):
                self.skipped += 1
                return None
            under_way = gate.begun_since(since)
            if not under_way:
                break
            await under_way[0].wait()
        began = loop.time()
        done = asyncio.Event()
        entry = (began, done)
        gate.under_way.append(entry)
        try:
            self.looks += 1
            asked = min(room, LEASE_BATCH)
            look = await self.store.lease_messages(
                args.stream_name, args.consumer_id, args.visibility_timeout, asked
            )
            gate.record(began, look, asked)
            return look
        finally:
            gate.under_way.remove(entry)
            done.set()

    def _timer(self, next_visible: float | None) -> float | None:
        """Seconds to sleep at most: until the queue said a message may become
        visible, or until a lease this stream holds runs out (the message is then
        due again, and this stream has room again), whichever is sooner."""
        _, lease_ends = self._room()
        if next_visible is None:
            return lease_ends
        return next_visible if lease_ends is None else min(next_visible, lease_ends)

    async def _deliver(self) -> None:
        signals = self.store.signals
        args = self.args
        loop = asyncio.get_running_loop()
        woken = True
        try:
            while not self._stopping:
                self._nudge.clear()
                room, lease_ends = self._room()
                if room <= 0:
                    await _first_of(self._nudge, None, lease_ends)
                    woken = True
                    continue
                with signals.watch(args.stream_name) as waiter:
                    since = self.gate.since(waiter, loop.time())
                    look = await self._look(room, since if woken else None)
                    woken = True
                    if look is None:
                        due = self.gate.next_visible_at
                        timer = None if due is None else max(0.0, due - loop.time())
                        await _first_of(self._nudge, waiter, self._timer(timer))
                        continue
                    for message in look.found:
                        self.outstanding[message.event.event_id] = message
                    if look.found:
                        if self._stopping:
                            return  # the processor releases them
                        self.delivered += len(look.found)
                        size = args.max_batch
                        if size == 1:
                            for message in look.found:
                                await self._outbox.put(message)
                        else:
                            leased = tuple(look.found)
                            for at in range(0, len(leased), size):
                                await self._outbox.put(Batch(leased[at : at + size]))
                        if look.again or len(look.found) >= min(room, LEASE_BATCH):
                            woken = False  # there may be more: look again at once
                            continue
                        # It took all there was: wait for the next write.
                        await _first_of(self._nudge, waiter, self._timer(look.next_visible))
                        continue
                    if look.again:
                        woken = False
                        continue
                    await _first_of(self._nudge, waiter, self._timer(look.next_visible))
        except Exception as exc:
            self._finish(exc)


def _with_lease(delivery: QueueMessage, until: datetime) -> QueueMessage:
    return QueueMessage(delivery.event, delivery.delivery_attempt, until, delivery.receipt)


async def _first_of(
    nudge: asyncio.Event, waiter: asyncio.Event | None, timeout: float | None
) -> None:
    """Wait until ``nudge`` or ``waiter`` is set, or ``timeout`` seconds pass."""
    if waiter is None:
        await StreamSignals.wait(nudge, timeout)
        return
    if nudge.is_set() or waiter.is_set():
        return
    waits = [asyncio.ensure_future(nudge.wait()), asyncio.ensure_future(waiter.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()

"""Rules every backend applies the same way, written once.

The backends differ in how they keep streams (Python structures, SQL rows); what a
call means does not. Whatever both must decide alike lives here: which stream types
an operation accepts, how a page is cut (by count and by bytes) and what its token
says, how acknowledgements are reported, and the reasons recorded with dead letters
(the PostgreSQL backend passes them to its SQL functions as parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TypeVar
from uuid import UUID

from storage.errors import WrongStreamType
from storage.receipts import Receipt
from storage.records import (
    AckFailure,
    AckFailureReason,
    AckResult,
    AllPage,
    MessageRef,
    RecordedEvent,
    StreamConfiguration,
    StreamType,
    event_id_of,
)

T = TypeVar("T")

#: Why a message whose last allowed lease ran out was dead-lettered.
EXPIRED_REASON = "visibility timeout expired"
#: The reason of a Nack that gave none, when it dead-letters a message.
NACKED_REASON = "nacked"
#: The reason recorded when a Consume stream's clean close gives back a message
#: that had had its last allowed delivery.
RELEASED_REASON = "released when its consumer closed the stream"

#: A retry delay is chosen at random within this fraction either side of its
#: nominal value, so that messages that failed together do not return together.
RETRY_JITTER = 0.1

#: Remembered queue ids (deduplication) forgotten per statement by the retention
#: task, so that a large backlog never holds locks or a snapshot for long.
FORGET_BATCH_SIZE = 5000

#: The default byte budget of one response's events (see :func:`within_budget`).
DEFAULT_PAGE_BYTES = 3 * 1024 * 1024

#: A read of the global log filtered by stream prefixes looks into each matching
#: stream when at most this many match; when more do, it examines at most
#: ALL_SCAN_WINDOW positions of the log per call (a page may then hold few events
#: or none, with next_position further on), so no call's cost follows the log.
MAX_PROBED_STREAMS = 200
ALL_SCAN_WINDOW = 20_000


def check_stream_type(stream_name: str, actual: int | None, wanted: StreamType) -> None:
    """Raise WrongStreamType unless a stream of type ``actual`` serves an operation
    on ``wanted`` streams. A stream without a type yet (configured, never written)
    serves either."""
    if actual is not None and actual != wanted:
        raise WrongStreamType(stream_name, StreamType(actual), wanted)


def nack_reason(reason: str) -> str:
    """The reason recorded when a nack dead-letters a message."""
    return reason or NACKED_REASON


def retry_delay(config: StreamConfiguration, attempt: int, randomness: float) -> timedelta:
    """How long a message waits before its next delivery once delivery ``attempt``
    (1 for the first) failed by its lease running out or by a nack without a
    delay: ``min(max, initial * multiplier^(attempt-1))``, moved by up to
    RETRY_JITTER of itself by ``randomness`` (uniform in [0, 1)). Zero without an
    initial delay. Computed in log space, so no attempt count overflows.

    (PostgreSQL computes the same in event_streaming.retry_delay,
    migrations/006_queue_features.sql.)"""
    initial = config.retry_initial_delay.total_seconds()
    if initial <= 0:
        return timedelta(0)
    ceiling = max(config.retry_max_delay.total_seconds(), initial)
    growth = (attempt - 1) * math.log(config.retry_multiplier)
    nominal = initial * math.exp(min(growth, math.log(ceiling / initial)))
    return timedelta(seconds=nominal * (1 - RETRY_JITTER + 2 * RETRY_JITTER * randomness))


def first_page(items: Sequence[T], page_size: int) -> tuple[Sequence[T], bool]:
    """A page from ``page_size + 1`` items looked up: the page, and whether more follow."""
    return items[:page_size], len(items) > page_size


def within_budget(
    items: Iterable[T], size: Callable[[T], int], budget: int
) -> tuple[list[T], T | None]:
    """The longest prefix of ``items`` whose sizes add up to at most ``budget`` bytes,
    and always at least the first item (one event larger than the budget still
    travels alone); and the first item left out (None when none was), where the
    next page starts. Every response that carries events is cut this way, so the
    memory a call holds is bounded whatever the payload sizes.

    ``items`` is taken one at a time, and nothing after the item left out is
    taken: a lazy iterable is read only as far as the budget reaches."""
    kept: list[T] = []
    total = 0
    for item in items:
        total += size(item)
        if kept and total > budget:
            return kept, item
        kept.append(item)
    return kept, None


def classify_acks(
    targets: Sequence[MessageRef], acknowledged: Iterable[MessageRef], present: Iterable[UUID]
) -> AckResult:
    """The answer to an Acknowledge of ``targets`` (ids or receipts; duplicates
    counted once, in request order): acknowledged, else NOT_HELD while the message
    was in the queue when the call began (someone else holds it, nobody does, or
    the receipt names an earlier delivery), else NOT_FOUND."""
    done_refs = set(acknowledged)
    present_ids = set(present)
    done: list[UUID] = []
    failed: list[AckFailure] = []
    for target in dict.fromkeys(targets):
        event_id = event_id_of(target)
        receipt = target if isinstance(target, Receipt) else None
        if target in done_refs:
            done.append(event_id)
        elif event_id in present_ids:
            failed.append(AckFailure(event_id, AckFailureReason.NOT_HELD, receipt))
        else:
            failed.append(AckFailure(event_id, AckFailureReason.NOT_FOUND, receipt))
    return AckResult(tuple(done), tuple(failed))


def all_page(
    events: tuple[RecordedEvent, ...],
    left_out: int | None,
    *,
    start: int,
    max_count: int,
    backward: bool,
    head: int,
    oldest: int | None,
    window: int | None,
) -> AllPage:
    """How a page of the global log read from ``start`` goes on.

    ``left_out``: the position of the first event the byte budget left out (the
    next page starts there). ``head``: the newest position ever given; ``oldest``:
    the oldest still stored (None: the log is empty). ``window``: how far this read
    looked when it examined a bounded window of the log (None: to the end)."""
    if left_out is not None:
        return AllPage(events, left_out, False)
    full = len(events) == max_count
    if backward:
        top = min(start, head)
        if full:
            last = events[-1].global_position
            return AllPage(events, 0, True) if last == oldest else AllPage(events, last - 1, False)
        if window is not None and oldest is not None and top - window >= oldest:
            return AllPage(events, top - window, False)
        return AllPage(events, 0, True)
    if full:
        last = events[-1].global_position
        return AllPage(events, last + 1, last >= head)
    if window is not None and start + window <= head:
        return AllPage(events, start + window, False)
    return AllPage(events, max(start, head + 1), True)

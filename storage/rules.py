"""Rules every backend applies the same way, written once.

The backends differ in how they keep streams (Python structures, SQL rows); what a
call means does not. Whatever both must decide alike lives here: which stream types
an operation accepts, how a page is cut (by count and by bytes) and what its token
says, how acknowledgements are reported, and the reasons recorded with dead letters
(the PostgreSQL backend passes them to its SQL functions as parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from uuid import UUID

from storage.errors import WrongStreamType
from storage.records import (
    AckFailure,
    AckFailureReason,
    AckResult,
    AllPage,
    RecordedEvent,
    StreamType,
)

T = TypeVar("T")

#: Why a message whose last allowed lease ran out was dead-lettered.
EXPIRED_REASON = "visibility timeout expired"
#: The reason of a Nack that gave none, when it dead-letters the message.
NACKED_REASON = "nacked"

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


def first_page(items: Sequence[T], page_size: int) -> tuple[Sequence[T], bool]:
    """A page from ``page_size + 1`` items looked up: the page, and whether more follow."""
    return items[:page_size], len(items) > page_size


def within_budget(items: Iterable[T], size: Callable[[T], int], budget: int) -> list[T]:
    """The longest prefix of ``items`` whose sizes add up to at most ``budget`` bytes,
    and always at least the first item (one event larger than the budget still
    travels alone). Every response that carries events is cut this way, so the
    memory a call holds is bounded whatever the payload sizes."""
    kept: list[T] = []
    total = 0
    for item in items:
        total += size(item)
        if kept and total > budget:
            break
        kept.append(item)
    return kept


def classify_acks(
    event_ids: Sequence[UUID], acknowledged: Iterable[UUID], present: Iterable[UUID]
) -> AckResult:
    """The answer to an Acknowledge of ``event_ids`` (duplicates counted once, in
    request order): acknowledged, else NOT_HELD while the message is still in the
    queue (someone else holds it, or nobody does), else NOT_FOUND."""
    done_ids = set(acknowledged)
    present_ids = set(present)
    done: list[UUID] = []
    failed: list[AckFailure] = []
    for event_id in dict.fromkeys(event_ids):
        if event_id in done_ids:
            done.append(event_id)
        elif event_id in present_ids:
            failed.append(AckFailure(event_id, AckFailureReason.NOT_HELD))
        else:
            failed.append(AckFailure(event_id, AckFailureReason.NOT_FOUND))
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

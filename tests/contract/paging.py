"""Read everything a paged call offers, checking that each page moves forward."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from storage.interface import EventStore
from storage.records import NO_FILTER, DeadLetter, ReadFilter, RecordedEvent, StreamSummary

#: More pages than any test needs: paging that never ends fails instead of hanging.
MAX_PAGES = 10_000

T = TypeVar("T")


async def read_to_end(
    store: EventStore,
    stream_name: str,
    *,
    from_offset: int = 0,
    page_size: int = 1000,
    read_filter: ReadFilter = NO_FILTER,
) -> list[RecordedEvent]:
    """Every event from ``from_offset`` on, following next_offset until end_of_stream."""
    found: list[RecordedEvent] = []
    for _ in range(MAX_PAGES):
        page = await store.read_stream(stream_name, from_offset, page_size, read_filter)
        assert len(page.events) <= page_size
        assert page.next_offset >= from_offset, "next_offset went backwards"
        found.extend(page.events)
        if page.end_of_stream:
            return found
        assert page.next_offset > from_offset, "a page short of the end made no progress"
        from_offset = page.next_offset
    raise AssertionError("paging did not reach the end of the stream")


class _TokenPage(Protocol):
    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=_TokenPage)


async def _follow_tokens(
    list_page: Callable[[str], Awaitable[P]],
    items_of: Callable[[P], Sequence[T]],
    page_size: int,
    last: str,
) -> list[T]:
    """Every item of a listing, following next_page_token from the first page
    (``list_page``: the page a token names), checking each page's size."""
    found: list[T] = []
    token = ""
    for _ in range(MAX_PAGES):
        page = await list_page(token)
        items = items_of(page)
        assert len(items) <= page_size
        found.extend(items)
        if not page.next_page_token:
            return found
        token = page.next_page_token
    raise AssertionError(f"paging did not reach the last {last}")


async def all_dead_letters(
    store: EventStore, stream_name: str, *, page_size: int = 1000
) -> list[DeadLetter]:
    """Every dead letter of a queue, following next_page_token."""
    return await _follow_tokens(
        lambda token: store.list_dead_letters(stream_name, page_size, token),
        lambda page: page.dead_letters,
        page_size,
        "dead letter",
    )


async def all_streams(
    store: EventStore, prefix: str, *, page_size: int = 1000
) -> list[StreamSummary]:
    """Every stream whose name starts with ``prefix``, following next_page_token."""
    return await _follow_tokens(
        lambda token: store.list_streams(prefix, page_size, token),
        lambda page: page.streams,
        page_size,
        "stream",
    )

"""The backends the contract runs on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from storage.interface import EventStore

BACKENDS = ("memory", "postgres")

#: A call on a store and a stream name, for tests that try several calls alike.
StoreCall = Callable[[EventStore, str], Awaitable[object]]

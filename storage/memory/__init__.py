"""The in-memory backend (development default)."""

from storage.memory.store import InMemoryEventStore

__all__ = ["InMemoryEventStore"]

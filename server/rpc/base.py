"""What every capability's servicer methods share."""

from __future__ import annotations

from typing import Any

import grpc

from storage.interface import EventStore

Context = grpc.aio.ServicerContext[Any, Any]


class RpcBase:
    """Holds the store; servicer methods validate, convert, call storage, convert back."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

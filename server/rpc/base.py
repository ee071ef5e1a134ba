"""What every capability's servicer methods share."""

from __future__ import annotations

from typing import Any

import grpc

from server.consume import Consumers
from server.sessions import AppendSessions
from server.subscriptions import Subscriptions
from storage.interface import EventStore

Context = grpc.aio.ServicerContext[Any, Any]


class RpcBase:
    """Holds the store and the server's long-lived calls (subscriptions, append
    sessions, Consume streams); servicer methods validate (server.validation), call
    storage, and convert (server.convert)."""

    def __init__(
        self,
        store: EventStore,
        subscriptions: Subscriptions,
        sessions: AppendSessions,
        consumers: Consumers,
    ) -> None:
        self.store = store
        self.subscriptions = subscriptions
        self.sessions = sessions
        self.consumers = consumers

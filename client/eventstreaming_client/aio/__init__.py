"""The asyncio client."""

from eventstreaming_client.aio.client import AsyncClient
from eventstreaming_client.aio.consume import AsyncConsumeStream
from eventstreaming_client.aio.session import AsyncAppendSession
from eventstreaming_client.aio.subscription import AsyncSubscription
from eventstreaming_client.aio.worker import AsyncHandler, AsyncWorker

__all__ = [
    "AsyncAppendSession",
    "AsyncClient",
    "AsyncConsumeStream",
    "AsyncHandler",
    "AsyncSubscription",
    "AsyncWorker",
]

"""The asyncio client."""

from eventstreaming_client.aio.client import AsyncClient
from eventstreaming_client.aio.subscription import AsyncSubscription
from eventstreaming_client.aio.worker import AsyncHandler, AsyncWorker

__all__ = ["AsyncClient", "AsyncHandler", "AsyncSubscription", "AsyncWorker"]

"""What the asyncio and the blocking queue workers share: settings, counters, and
the reason recorded when a handler fails."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

log = logging.getLogger("eventstreaming_client.worker")

#: The reason a stopping worker gives back the messages it still holds.
STOPPED_REASON = "worker stopped"
#: The server keeps at most this many characters of a nack's reason.
MAX_REASON_LENGTH = 1000


def default_consumer_id() -> str:
    """host:pid:random, so that two workers never share a consumer id by accident."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def failure_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_REASON_LENGTH]


@dataclass(frozen=True)
class WorkerSettings:
    stream_name: str
    consumer_id: str
    concurrency: int
    visibility_timeout: timedelta
    heartbeat_interval: timedelta
    poll_wait: timedelta
    nack_delay: timedelta | None
    drain_timeout: timedelta

    @classmethod
    def make(
        cls,
        stream_name: str,
        *,
        concurrency: int,
        consumer_id: str | None,
        visibility_timeout: timedelta,
        heartbeat_interval: timedelta | None,
        poll_wait: timedelta,
        nack_delay: timedelta | None,
        drain_timeout: timedelta,
    ) -> WorkerSettings:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if visibility_timeout <= timedelta(0):
            raise ValueError("visibility_timeout must be positive")
        # Extend well before the lease runs out: a third of it leaves two more
        # chances when one extension is slow or fails.
        beat = heartbeat_interval or visibility_timeout / 3
        if beat >= visibility_timeout:
            raise ValueError("heartbeat_interval must be shorter than visibility_timeout")
        return cls(
            stream_name=stream_name,
            consumer_id=consumer_id or default_consumer_id(),
            concurrency=concurrency,
            visibility_timeout=visibility_timeout,
            heartbeat_interval=beat,
            poll_wait=min(poll_wait, timedelta(seconds=20)),
            nack_delay=nack_delay,
            drain_timeout=drain_timeout,
        )


@dataclass
class WorkerStats:
    """What a worker did so far."""

    #: Handler returned and the message was acknowledged.
    acknowledged: int = 0
    #: Handler raised and the message was nacked.
    nacked: int = 0
    #: Lease extensions sent while handlers ran.
    extensions: int = 0
    #: Messages whose lease was lost before the ack (another consumer got them).
    lost_leases: int = 0
    #: Messages given back unprocessed when the worker stopped.
    released: int = 0

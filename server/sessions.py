"""AppendSession: many AppendToStreams requests over one bidirectional stream.

Each request is validated and handed to storage as it is read, so requests of a
session (and of every other caller) are written together by storage's group
commit; each is answered, by its request id, once its write is durable, with the
result or the status the unary call would give. Storage applies requests that
touch the same stream in the order they were handed to it, which is the order
they were read: they are handed on synchronously, one after the other.

Answers are written with ``context.write`` from one loop, so each costs one
message on the wire and nothing more.

Flow control: a session holds at most ``max_in_flight`` requests that are read
but not yet answered (written back to the client). While it holds that many it
reads no more, so gRPC's flow control stops a client that sends faster than the
database writes or than it reads its answers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, Awaitable, Callable

from server import convert, validation
from server.calls import Undecodable
from server.errors import ServerShuttingDown
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.metrics import Metrics
from server.status import status_message
from storage.interface import EventStore
from storage.records import AppendResult

METHOD = "AppendSession"


class AppendSessions:
    """The sessions in progress; close() ends them when the server stops."""

    def __init__(
        self, store: EventStore, max_in_flight: int, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        #: Requests a session may hold read but unanswered before it stops reading
        #: (the append_session_max_in_flight setting).
        self.max_in_flight = max_in_flight
        self.closed = False
        self._readers: set[asyncio.Task[None]] = set()
        #: The most requests any session has held unanswered at once.
        self.peak_in_flight = 0

    def close(self) -> None:
        """Stop reading requests: each session answers what it has read, then ends
        with UNAVAILABLE."""
        self.closed = True
        for reader in list(self._readers):
            reader.cancel()

    async def serve(
        self,
        requests: AsyncIterable[pb.AppendSessionRequest | Undecodable],
        write: Callable[[pb.AppendSessionResponse], Awaitable[None]],
    ) -> None:
        """Answer ``requests`` with ``write``, as their writes complete."""
        if self.closed:
            raise ServerShuttingDown(_AGAIN)
        session = _Session(self, requests)
        reader = asyncio.create_task(session.read(), name="append-session-reader")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while (answer := await session.answers.get()) is not None:
                await write(answer)
                session.answered()
            await reader  # a broken request stream ends the call with its error
        finally:
            # What storage took it writes (or not) whole; only the answers are lost.
            reader.cancel()
        if session.stopped:
            raise ServerShuttingDown(_AGAIN)


_AGAIN = "open a new session to continue"


class _Session:
    def __init__(
        self,
        owner: AppendSessions,
        requests: AsyncIterable[pb.AppendSessionRequest | Undecodable],
    ) -> None:
        self.owner = owner
        self.requests = requests
        #: Answers ready to be written back; None once the session is over.
        self.answers: asyncio.Queue[pb.AppendSessionResponse | None] = asyncio.Queue()
        #: Requests read and not yet answered; the reader waits while there are
        #: max_in_flight of them.
        self.held = 0
        self._room = asyncio.Event()
        self._room.set()
        #: Appends handed to storage and not yet settled.
        self.pending: set[asyncio.Future[tuple[AppendResult, ...]]] = set()
        #: True when the server's shutdown ended the reading.
        self.stopped = False

    def answered(self) -> None:
        self.held -= 1
        self._room.set()

    async def read(self) -> None:
        owner = self.owner
        try:
            try:
                iterator = aiter(self.requests)
                while True:
                    while self.held >= owner.max_in_flight:
                        self._room.clear()
                        await self._room.wait()
                    try:
                        request = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    self.held += 1
                    owner.peak_in_flight = max(owner.peak_in_flight, self.held)
                    self._hand_on(request)
            except asyncio.CancelledError:
                if not owner.closed:
                    raise
                self.stopped = True
            if self.pending:
                await asyncio.wait(set(self.pending))
        finally:
            self.answers.put_nowait(None)

    def _hand_on(self, request: pb.AppendSessionRequest | Undecodable) -> None:
        if isinstance(request, Undecodable):
            self._answer_error(0, request.error())
            return
        request_id = request.request_id
        try:
            args = validation.append_streams_request(request.request)
        except Exception as exc:
            self._answer_error(request_id, exc)
            return
        # Handed on now, so storage takes the requests in the order they were read.
        pending = self.owner.store.hand_on_append(*args)
        self.pending.add(pending)
        pending.add_done_callback(functools.partial(self._settled, request_id))

    def _settled(self, request_id: int, pending: asyncio.Future[tuple[AppendResult, ...]]) -> None:
        self.pending.discard(pending)
        if pending.cancelled():
            return
        exc = pending.exception()
        if exc is not None:
            self._answer_error(request_id, exc)
            return
        result = convert.append_streams_response(pending.result())
        if self.owner.metrics is not None:
            self.owner.metrics.observe_appends(result)
        self.answers.put_nowait(pb.AppendSessionResponse(request_id=request_id, result=result))

    def _answer_error(self, request_id: int, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            raise exc
        self.answers.put_nowait(
            pb.AppendSessionResponse(request_id=request_id, error=status_message(exc, METHOD))
        )

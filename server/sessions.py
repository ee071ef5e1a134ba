"""AppendSession: many AppendToStreams requests over one bidirectional stream.

Each request is validated and handed to storage as it is read, so requests of a
session (and of every other caller) are written together by storage's group
commit; each is answered, by its request id, once its write is durable, with the
result or the status the unary call would give. Storage applies requests that
touch the same stream in the order they were handed to it, which is the order
they were read: they are handed on synchronously, one after the other.

Flow control: a session holds at most ``max_in_flight`` requests that are read
but not yet answered (written back to the client). While it holds that many it
reads no more, so gRPC's flow control stops a client that sends faster than the
database writes or than it reads its answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

from server import convert, validation
from server.errors import ServerShuttingDown
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.interceptors import Undecodable
from server.status import status_message
from storage.interface import EventStore

METHOD = "AppendSession"


class AppendSessions:
    """The sessions in progress; close() ends them when the server stops."""

    def __init__(self, store: EventStore, max_in_flight: int) -> None:
        self.store = store
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
        self, requests: AsyncIterable[pb.AppendSessionRequest | Undecodable]
    ) -> AsyncIterator[pb.AppendSessionResponse]:
        """The answers to ``requests``, as their writes complete."""
        if self.closed:
            raise ServerShuttingDown("open a new session to continue")
        session = _Session(self, requests)
        reader = asyncio.create_task(session.read(), name="append-session-reader")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while True:
                answer = await session.answers.get()
                if answer is None:
                    break
                yield answer
                session.held -= 1
                session.slots.release()
            await reader  # a broken request stream ends the call with its error
        finally:
            reader.cancel()
            for append in list(session.appends):
                append.cancel()  # storage finishes what it took; only the answer is lost
        if session.stopped:
            raise ServerShuttingDown("open a new session to continue")


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
        #: One per request read and not yet answered.
        self.slots = asyncio.Semaphore(owner.max_in_flight)
        self.appends: set[asyncio.Task[None]] = set()
        #: Requests read and not yet answered.
        self.held = 0
        #: True when the server's shutdown ended the reading.
        self.stopped = False

    async def read(self) -> None:
        try:
            try:
                async for request in _requests(self.requests, self.slots):
                    self.held += 1
                    self.owner.peak_in_flight = max(self.owner.peak_in_flight, self.held)
                    self._hand_on(request)
            except asyncio.CancelledError:
                if not self.owner.closed:
                    raise
                self.stopped = True
            if self.appends:
                await asyncio.wait(set(self.appends))
        finally:
            self.answers.put_nowait(None)

    def _hand_on(self, request: pb.AppendSessionRequest | Undecodable) -> None:
        if isinstance(request, Undecodable):
            self._answer_error(0, request.error())
            return
        try:
            args = validation.append_streams_request(request.request)
        except Exception as exc:
            self._answer_error(request.request_id, exc)
            return
        # Started now, so storage takes the requests in the order they were read.
        task = asyncio.create_task(self._append(request.request_id, args))
        self.appends.add(task)
        task.add_done_callback(self.appends.discard)

    async def _append(self, request_id: int, args: validation.AppendStreamsArgs) -> None:
        try:
            results = await self.owner.store.append_to_streams(*args)
        except Exception as exc:
            self._answer_error(request_id, exc)
            return
        self.answers.put_nowait(
            pb.AppendSessionResponse(
                request_id=request_id, result=convert.append_streams_response(results)
            )
        )

    def _answer_error(self, request_id: int, exc: Exception) -> None:
        self.answers.put_nowait(
            pb.AppendSessionResponse(request_id=request_id, error=status_message(exc, METHOD))
        )


async def _requests(
    requests: AsyncIterable[pb.AppendSessionRequest | Undecodable], slots: asyncio.Semaphore
) -> AsyncIterator[pb.AppendSessionRequest | Undecodable]:
    """The requests, each read only once a slot is free for it."""
    iterator = aiter(requests)
    while True:
        await slots.acquire()
        try:
            request = await anext(iterator)
        except StopAsyncIteration:
            slots.release()
            return
        except BaseException:
            slots.release()
            raise
        yield request

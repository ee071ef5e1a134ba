"""AppendSession for asyncio code: many appends pipelined over one call."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client.errors import EventStreamingError, error_from_status, handle_rpc_error
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import AppendResult, ConsumerCheckpoint, NewEvent, StreamAppend


class AsyncAppendSession:
    """Appends sent one after the other without waiting for the answers, each
    awaited on its own. The service applies appends to the same stream in the
    order they were sent and writes the others together, so a writer can pipeline
    ``expected_last_offset`` N, N+1, ... to one stream from one task, or share the
    session between many tasks.

    Made by :meth:`AsyncClient.append_session`; use it as ``async with``. When the
    session ends (the server shuts down, the connection breaks) every append still
    waiting raises the session's error (``Unavailable``): open a new session and
    send them again; their events carry ids, so what was written is not written
    twice.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[list[AppendResult]]] = {}
        self._writing = asyncio.Lock()
        self._ended: EventStreamingError | None = None
        self._reader = asyncio.create_task(self._read(), name="append-session-answers")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def append_to_streams(
        self, appends: Sequence[StreamAppend], *, checkpoint: ConsumerCheckpoint | None = None
    ) -> list[AppendResult]:
        """As :meth:`AsyncClient.append_to_streams`, over the session."""
        request = _convert.append_to_streams_request(_convert.with_stream_ids(appends), checkpoint)
        request_id = next(self._ids)
        answer: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        async with self._writing:
            if self._ended is not None:
                raise self._ended
            self._pending[request_id] = answer
            try:
                await self._call.write(
                    pb.AppendSessionRequest(request_id=request_id, request=request)
                )
            except grpc.RpcError as exc:
                self._pending.pop(request_id, None)
                raise handle_rpc_error(exc) from None
        return await answer

    async def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        *,
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        """As :meth:`AsyncClient.append_to_stream`, over the session."""
        [result] = await self.append_to_streams(
            [StreamAppend(stream_name, events, expected_last_offset)]
        )
        return result

    async def close(self) -> None:
        """Send no more; wait for the answers still due, then end the call."""
        async with self._writing:
            if self._ended is None:
                # Ended already when this fails: the reader has the reason.
                with contextlib.suppress(grpc.RpcError):
                    await self._call.done_writing()
        await asyncio.shield(self._reader)

    async def _read(self) -> None:
        try:
            async for answer in self._call:
                waiting = self._pending.pop(answer.request_id, None)
                if waiting is None or waiting.done():
                    continue
                if answer.WhichOneof("outcome") == "error":
                    waiting.set_exception(error_from_status(answer.error))
                else:
                    waiting.set_result([_convert.append_result(r) for r in answer.result.results])
            ended: EventStreamingError | None = None
        except grpc.RpcError as exc:
            ended = handle_rpc_error(exc)
        except asyncio.CancelledError:
            ended = EventStreamingError("the append session was cancelled")
        if ended is None and self._pending:
            ended = EventStreamingError("the append session ended before answering")
        if ended is not None:
            self._ended = ended
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(ended)
            self._pending.clear()

"""AppendSession for blocking code: many appends pipelined over one call."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import grpc

from eventstreaming_client import _convert
from eventstreaming_client.errors import EventStreamingError, error_from_status, handle_rpc_error
from eventstreaming_client.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from eventstreaming_client.models import AppendResult, ConsumerCheckpoint, NewEvent, StreamAppend
from eventstreaming_client.sync._requests import RequestPipe


class AppendSession:
    """Appends sent one after the other without waiting for the answers. The
    service applies appends to the same stream in the order they were sent and
    writes the others together.

    ``append_to_stream`` / ``append_to_streams`` send and wait (share the session
    between threads to have many under way); ``submit_append_to_stream`` /
    ``submit_append_to_streams`` send and return a
    :class:`concurrent.futures.Future` at once, so that one thread can pipeline
    ``expected_last_offset`` N, N+1, ... to one stream.

    Made by :meth:`Client.append_session`; use it as ``with``. When the session
    ends (the server shuts down, the connection breaks) every append still
    waiting raises the session's error (``Unavailable``): open a new session and
    send them again; their events carry ids, so what was written is not written
    twice.
    """

    def __init__(self, method: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._requests = RequestPipe()
        self._call = method(iter(self._requests), metadata=metadata)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[list[AppendResult]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._ended: EventStreamingError | None = None
        self._reader = threading.Thread(
            target=self._read, name="append-session-answers", daemon=True
        )
        self._reader.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def submit_append_to_streams(
        self, appends: Sequence[StreamAppend], *, checkpoint: ConsumerCheckpoint | None = None
    ) -> Future[list[AppendResult]]:
        """Send an ``append_to_streams`` over the session; its future answer."""
        request = _convert.append_to_streams_request(_convert.with_stream_ids(appends), checkpoint)
        answer: Future[list[AppendResult]] = Future()
        with self._lock:
            if self._ended is not None:
                raise self._ended
            if self._closed:
                raise EventStreamingError("the append session is closed")
            request_id = next(self._ids)
            self._pending[request_id] = answer
            self._requests.put(pb.AppendSessionRequest(request_id=request_id, request=request))
        return answer

    def submit_append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        *,
        expected_last_offset: int | None = None,
    ) -> Future[AppendResult]:
        """Send an ``append_to_stream`` over the session; its future answer."""
        whole = self.submit_append_to_streams(
            [StreamAppend(stream_name, events, expected_last_offset)]
        )
        single: Future[AppendResult] = Future()

        def unpack(done: Future[list[AppendResult]]) -> None:
            error = done.exception()
            if error is not None:
                single.set_exception(error)
            else:
                single.set_result(done.result()[0])

        whole.add_done_callback(unpack)
        return single

    def append_to_streams(
        self, appends: Sequence[StreamAppend], *, checkpoint: ConsumerCheckpoint | None = None
    ) -> list[AppendResult]:
        """As :meth:`Client.append_to_streams`, over the session."""
        return self.submit_append_to_streams(appends, checkpoint=checkpoint).result()

    def append_to_stream(
        self,
        stream_name: str,
        events: Sequence[NewEvent],
        *,
        expected_last_offset: int | None = None,
    ) -> AppendResult:
        """As :meth:`Client.append_to_stream`, over the session."""
        return self.submit_append_to_stream(
            stream_name, events, expected_last_offset=expected_last_offset
        ).result()

    def close(self) -> None:
        """Send no more; wait for the answers still due, then end the call."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._requests.close()
        self._reader.join()

    def _read(self) -> None:
        ended: EventStreamingError | None = None
        try:
            for answer in self._call:
                with self._lock:
                    waiting = self._pending.pop(answer.request_id, None)
                if waiting is None or waiting.done():
                    continue
                if answer.WhichOneof("outcome") == "error":
                    waiting.set_exception(error_from_status(answer.error))
                else:
                    waiting.set_result([_convert.append_result(r) for r in answer.result.results])
        except grpc.RpcError as exc:
            ended = handle_rpc_error(exc)
        except Exception as exc:  # never leave an append waiting
            ended = EventStreamingError(f"the append session failed: {exc!r}")
        with self._lock:
            if ended is None and self._pending:
                ended = EventStreamingError("the append session ended before answering")
            self._ended = ended or EventStreamingError("the append session is closed")
            waiting_still = list(self._pending.values())
            self._pending.clear()
            if not self._closed:
                self._closed = True
                self._requests.close()  # gRPC's thread that sends them ends too
        for waiting in waiting_still:
            if not waiting.done():
                waiting.set_exception(self._ended)

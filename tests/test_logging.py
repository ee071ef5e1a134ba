"""One structured log line per call (DEBUG when OK, WARNING/ERROR otherwise) with
method, stream, status, duration and a request id that the caller gets back in
trailing metadata; text or JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from server.logs import JsonFormatter, KeyValueFormatter, RequestIdFilter
from storage.memory import InMemoryEventStore
from tests.conftest import RunningServer, server_settings
from tests.support import ServerProcess, error_info, events, unique_name, wait_until

CALLS = "server.calls"


def trailing(call_metadata: object) -> dict[str, str]:
    return {key: value for key, value in call_metadata or ()}  # type: ignore[attr-defined]


def call_records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == CALLS and getattr(r, "request_id", None) == request_id
    ]


async def test_a_successful_call_logs_one_debug_line_and_returns_the_request_id(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=CALLS)
    name = unique_name()
    call = server.stub.AppendToStream(
        pb.AppendToStreamRequest(stream_name=name, events=events(2)),
        metadata=(("x-request-id", "req-abc.123"),),
    )
    await call
    assert trailing(await call.trailing_metadata())["x-request-id"] == "req-abc.123"
    # The call's line is written as the call ends, which the client may see first.
    [record] = await wait_until(lambda: call_records(caplog, "req-abc.123"))
    assert record.levelno == logging.DEBUG
    assert record.__dict__["method"] == "AppendToStream"
    assert record.__dict__["stream"] == name
    assert record.__dict__["status"] == "OK"
    assert record.__dict__["duration_ms"] >= 0


async def test_a_failed_call_logs_a_warning_with_a_generated_request_id(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=CALLS)
    name = unique_name()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=name))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    request_id = trailing(caught.value.trailing_metadata())["x-request-id"]
    assert len(request_id) == 32
    # The rich error details are still there next to the request id.
    assert error_info(caught.value) == {"stream_name": name}
    [record] = await wait_until(lambda: call_records(caplog, request_id))
    assert record.levelno == logging.WARNING
    assert record.__dict__["status"] == "NOT_FOUND"
    assert record.__dict__["stream"] == name


async def test_an_unacceptable_request_id_is_replaced(server: RunningServer) -> None:
    call = server.stub.ListStreams(
        pb.ListStreamsRequest(prefix=unique_name()),
        metadata=(("x-request-id", "has spaces and is { odd }"),),
    )
    await call
    returned = trailing(await call.trailing_metadata())["x-request-id"]
    assert returned != "has spaces and is { odd }"
    assert len(returned) == 32


class BrokenStore(InMemoryEventStore):
    async def get_stream_length(self, stream_name: str) -> int:
        raise RuntimeError("disk on fire")


@pytest_asyncio.fixture
async def broken_server() -> AsyncIterator[tuple[EventStreamingServer, pb_grpc.EventStreamingStub]]:
    app = EventStreamingServer(server_settings("memory"), store=BrokenStore())
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, pb_grpc.EventStreamingStub(channel)
    finally:
        await channel.close()
        await app.stop(grace=0)


async def test_an_internal_error_logs_at_error_with_the_request_id_on_every_line(
    broken_server: tuple[EventStreamingServer, pb_grpc.EventStreamingStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, stub = broken_server
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RequestIdFilter())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetStreamLength(
            pb.GetStreamLengthRequest(stream_name="boom"), metadata=(("x-request-id", "r-500"),)
        )
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert "disk on fire" not in (caught.value.details() or "")
    assert trailing(caught.value.trailing_metadata())["x-request-id"] == "r-500"
    [call_line] = await wait_until(lambda: call_records(caplog, "r-500"))
    assert call_line.levelno == logging.ERROR
    assert call_line.__dict__["status"] == "INTERNAL"
    # The traceback line (from the error mapping) carries the same request id.
    [traceback_line] = [r for r in caplog.records if r.exc_info and r.name != CALLS]
    assert traceback_line.__dict__["request_id"] == "r-500"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("server.calls", logging.WARNING, __file__, 1, "msg %s", ("x",), None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_fields() -> None:
    line = JsonFormatter().format(_record(method="Nack", stream="s-1", request_id="r-1"))
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["message"] == "msg x"
    assert (entry["method"], entry["stream"], entry["request_id"]) == ("Nack", "s-1", "r-1")


def test_text_lines_quote_values_with_spaces() -> None:
    line = KeyValueFormatter("%(levelname)s %(message)s").format(
        _record(stream="a b", method="Nack", request_id="r-2")
    )
    assert line == 'WARNING msg x stream="a b" method=Nack request_id=r-2'


async def test_json_log_format_of_a_server_process(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    process = await ServerProcess.start(
        {"EVENTSTREAMING_LOG_FORMAT": "json", "EVENTSTREAMING_LOG_LEVEL": "DEBUG"}, log_path
    )
    name = unique_name()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            await stub.AppendToStream(
                pb.AppendToStreamRequest(stream_name=name, events=events(1)),
                metadata=(("x-request-id", "json-check-1"),),
            )
    finally:
        assert await process.terminate() == 0
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    [call] = [e for e in entries if e.get("request_id") == "json-check-1"]
    assert call["level"] == "DEBUG"
    assert call["logger"] == CALLS
    assert (call["method"], call["stream"], call["status"]) == ("AppendToStream", name, "OK")
    assert isinstance(call["duration_ms"], float)
    assert any(e["message"] == "server stopped" for e in entries)

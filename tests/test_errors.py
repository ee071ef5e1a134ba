"""Errors: storage outages are UNAVAILABLE, surprises are INTERNAL without details,
and driver errors never escape the PostgreSQL backend."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from server.app import EventStreamingServer
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.generated.eventstreaming.v1 import event_streaming_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, server_settings
from tests.support import ServerProcess, TcpProxy, events, wait_serving, wait_until


async def test_unexpected_error_is_internal_without_details(
    server: RunningServer,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def explode(*args: object, **kwargs: object) -> int:
        raise RuntimeError("secret detail: password=hunter2")

    monkeypatch.setattr(server.store, "get_stream_length", explode)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetStreamLength(pb.GetStreamLengthRequest(stream_name=stream_name))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")
    assert "hunter2" in caplog.text


async def test_database_outage_is_unavailable_and_recovers(
    proxy: TcpProxy, pg_database: str, stream_name: str
) -> None:
    app = EventStreamingServer(server_settings("postgres", proxy.dsn(pg_database)))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.EventStreamingStub(channel)
            request = pb.AppendToStreamRequest(stream_name=stream_name, events=events(1))
            await stub.AppendToStream(request)
            proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.AppendToStream(request)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            proxy.restore()

            async def appended() -> bool:
                try:
                    await stub.AppendToStream(
                        pb.AppendToStreamRequest(stream_name=stream_name, events=events(1))
                    )
                except grpc.aio.AioRpcError:
                    return False
                return True

            await wait_until(appended, timeout=15)
    finally:
        await app.stop(grace=1)


async def test_health_serves_only_once_storage_is_ready(
    proxy: TcpProxy, pg_database: str, tmp_path: Path
) -> None:
    proxy.hold()
    server = await ServerProcess.start(
        {
            "EVENTSTREAMING_STORAGE": "postgres",
            "EVENTSTREAMING_DATABASE_URL": proxy.dsn(pg_database),
        },
        tmp_path / "server.log",
        wait=False,
    )
    try:
        with pytest.raises(AssertionError, match="not SERVING"):
            await wait_serving(server.address, timeout=1.5)
        proxy.release()
        await server.wait_serving()
    finally:
        proxy.release()
        await server.terminate()

"""ConfigureStream and GetStreamConfiguration, on both backends."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from tests.support import Stub, dequeue, enqueue, epoch, error_info, events, metadata, seconds


async def configure(stub: Stub, name: str, **fields: Any) -> pb.StreamConfiguration:
    reply = await stub.ConfigureStream(
        pb.ConfigureStreamRequest(stream_name=name, configuration=pb.StreamConfiguration(**fields))
    )
    return reply.configuration


async def stored(stub: Stub, name: str) -> pb.StreamConfiguration:
    reply = await stub.GetStreamConfiguration(pb.GetStreamConfigurationRequest(stream_name=name))
    return reply.configuration


async def configure_error(stub: Stub, name: str, **fields: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await configure(stub, name, **fields)
    return caught.value


async def test_configure_creates_the_stream_with_defaults_filled_in(
    stub: Stub, stream_name: str
) -> None:
    returned = await configure(stub, stream_name)
    assert returned == await stored(stub, stream_name)
    assert returned.stream_type == pb.STREAM_TYPE_UNSPECIFIED
    assert returned.max_delivery_attempts == 5
    assert returned.default_visibility_timeout.ToSeconds() == 30
    assert not returned.HasField("retention_max_age")
    assert returned.retention_max_count == 0


async def test_configuration_is_stored_and_replaced_whole(stub: Stub, stream_name: str) -> None:
    first = await configure(
        stub,
        stream_name,
        stream_type=pb.STREAM_TYPE_PERSISTENT,
        retention_max_age=seconds(3600),
        retention_max_count=1000,
    )
    assert first.retention_max_age.ToSeconds() == 3600
    assert first.retention_max_count == 1000
    assert await stored(stub, stream_name) == first
    # The next call replaces everything; an unspecified type keeps the stored one.
    second = await configure(stub, stream_name, retention_max_count=10)
    assert second.stream_type == pb.STREAM_TYPE_PERSISTENT
    assert not second.HasField("retention_max_age")
    assert second.retention_max_count == 10
    assert await stored(stub, stream_name) == second


async def test_queue_settings_round_trip(stub: Stub, stream_name: str) -> None:
    returned = await configure(
        stub,
        stream_name,
        stream_type=pb.STREAM_TYPE_EPHEMERAL,
        max_delivery_attempts=3,
        default_visibility_timeout=seconds(90),
    )
    assert (returned.stream_type, returned.max_delivery_attempts) == (
        pb.STREAM_TYPE_EPHEMERAL,
        3,
    )
    assert returned.default_visibility_timeout.ToSeconds() == 90
    assert await stored(stub, stream_name) == returned


async def test_dequeue_without_a_visibility_timeout_uses_the_stream_default(
    stub: Stub, stream_name: str
) -> None:
    await configure(
        stub,
        stream_name,
        stream_type=pb.STREAM_TYPE_EPHEMERAL,
        default_visibility_timeout=seconds(600),
    )
    (only,) = await enqueue(stub, stream_name)
    (message,) = await dequeue(stub, stream_name, "a", visibility=None)
    assert message.event.event_id == only
    lease = epoch(message.visible_until) - epoch(message.event.timestamp)
    assert 590 < lease < 700


async def test_changing_the_type_of_a_typed_stream_is_refused(stub: Stub, stream_name: str) -> None:
    await stub.AppendToStream(pb.AppendToStreamRequest(stream_name=stream_name, events=events(1)))
    error = await configure_error(stub, stream_name, stream_type=pb.STREAM_TYPE_EPHEMERAL)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "persistent" in (error.details() or "")
    # Nothing was changed.
    assert (await stored(stub, stream_name)).stream_type == pb.STREAM_TYPE_PERSISTENT
    # Restating the same type is fine.
    same = await configure(stub, stream_name, stream_type=pb.STREAM_TYPE_PERSISTENT)
    assert same.stream_type == pb.STREAM_TYPE_PERSISTENT


async def test_a_stream_configured_as_a_queue_refuses_appends(stub: Stub, stream_name: str) -> None:
    await configure(stub, stream_name, stream_type=pb.STREAM_TYPE_EPHEMERAL)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendToStream(
            pb.AppendToStreamRequest(stream_name=stream_name, events=events(1))
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ephemeral" in (caught.value.details() or "")


async def test_a_stream_configured_as_a_log_refuses_enqueues(stub: Stub, stream_name: str) -> None:
    await configure(stub, stream_name, stream_type=pb.STREAM_TYPE_PERSISTENT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await enqueue(stub, stream_name)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "persistent" in (caught.value.details() or "")


async def test_an_untyped_stream_takes_the_type_of_its_first_write(
    stub: Stub, stream_name: str
) -> None:
    await configure(stub, stream_name, max_delivery_attempts=2)
    await enqueue(stub, stream_name)
    config = await stored(stub, stream_name)
    assert config.stream_type == pb.STREAM_TYPE_EPHEMERAL
    assert config.max_delivery_attempts == 2
    assert (await metadata(stub, stream_name)).stream_type == pb.STREAM_TYPE_EPHEMERAL


async def test_configuration_of_an_unknown_stream_is_not_found(
    stub: Stub, stream_name: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stored(stub, stream_name)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


INVALID_CONFIGURATIONS: list[tuple[str, dict[str, Any]]] = [
    ("configuration.stream_type", {"stream_type": 7}),
    ("configuration.max_delivery_attempts", {"max_delivery_attempts": -1}),
    ("configuration.max_delivery_attempts", {"max_delivery_attempts": 1001}),
    ("configuration.default_visibility_timeout", {"default_visibility_timeout": seconds(-5)}),
    (
        "configuration.default_visibility_timeout",
        {"default_visibility_timeout": seconds(13 * 3600)},
    ),
    ("configuration.retention_max_age", {"retention_max_age": seconds(-1)}),
    ("configuration.retention_max_count", {"retention_max_count": -1}),
]


@pytest.mark.parametrize(
    ("field", "fields"),
    INVALID_CONFIGURATIONS,
    ids=[f"{field}-{i}" for i, (field, _) in enumerate(INVALID_CONFIGURATIONS)],
)
async def test_invalid_configuration_names_the_field(
    memory_stub: Stub, stream_name: str, field: str, fields: dict[str, Any]
) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    error = await configure_error(stub, stream_name, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).get("field") == field
    # Nothing was created.
    with pytest.raises(grpc.aio.AioRpcError):
        await stored(stub, stream_name)


async def test_invalid_stream_name_is_named(memory_stub: Stub) -> None:
    stub = memory_stub  # validation alone: one backend is enough
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stored(stub, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).get("field") == "stream_name"

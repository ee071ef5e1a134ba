"""Retries, subscriptions that resume, TLS and tokens: the client through a proxy
that drops connections, and across a server restart."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from eventstreaming_client import (
    ALL,
    AsyncClient,
    Client,
    NewEvent,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from tests.client import servers
from tests.client.proxy import BreakableProxy
from tests.support import ServerProcess, free_port, unique_name, wait_until, wait_until_sync
from tests.test_security import make_certificate

FAST_RETRY = RetryPolicy(max_attempts=30, initial_backoff=0.02, max_backoff=0.2)


@pytest.fixture
def proxy(thread_server: servers.ThreadServer) -> Iterator[BreakableProxy]:
    made = BreakableProxy(int(thread_server.address.rsplit(":", 1)[1]))
    try:
        yield made
    finally:
        made.close()


def test_an_append_whose_answer_was_lost_is_retried_and_written_once(
    proxy: BreakableProxy, client: Client
) -> None:
    name = unique_name()
    with Client(proxy.address, retry=FAST_RETRY) as through:
        through.append_to_stream(name, [NewEvent("Warm")])
        proxy.drop_next_reply()
        result = through.append_to_stream(name, [NewEvent("E", {"n": i}) for i in range(3)])
    assert proxy.drops >= 1
    assert (result.first_offset, result.last_offset) == (1, 3)
    assert [e.event_type for e in client.iter_stream(name)] == ["Warm", "E", "E", "E"]


def test_calls_wait_out_an_outage_with_backoff(proxy: BreakableProxy, client: Client) -> None:
    name = unique_name()
    client.append_to_stream(name, [NewEvent("E")])
    with Client(proxy.address, retry=FAST_RETRY, timeout=20) as through:
        assert through.get_stream_length(name) == 1
        proxy.cut()
        timer = threading.Timer(0.5, proxy.restore)
        timer.start()
        started = time.monotonic()
        assert through.read_stream(name).events[0].offset == 0
        assert time.monotonic() - started >= 0.3  # it waited for the proxy to come back
        timer.join()


def test_unavailable_once_retries_are_spent_and_no_retry_for_unsafe_calls(
    proxy: BreakableProxy,
) -> None:
    counting = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
    with Client(proxy.address, retry=counting, timeout=5) as through:
        proxy.cut()
        with pytest.raises(Unavailable):
            through.read_stream(unique_name())
        with pytest.raises(Unavailable):
            through.enqueue(unique_name("jobs"), [NewEvent("Job")])


def test_a_subscription_resumes_through_dropped_connections_without_gap_or_duplicate(
    proxy: BreakableProxy, client: Client
) -> None:
    name = unique_name()
    seen: list[int] = []
    with Client(proxy.address, retry=FAST_RETRY) as through:
        subscription = through.subscribe(name, from_offset=0)

        def follow() -> None:
            for event in subscription:
                seen.append(event.offset)

        reader = threading.Thread(target=follow, daemon=True)
        client.append_to_stream(name, [NewEvent("E") for _ in range(10)])
        reader.start()
        wait_until_sync(lambda: len(seen) == 10, timeout=20, interval=0.02)
        proxy.cut()
        client.append_to_stream(name, [NewEvent("E") for _ in range(10)])
        time.sleep(0.2)
        proxy.restore()
        client.append_to_stream(name, [NewEvent("E") for _ in range(10)])
        wait_until_sync(lambda: len(seen) >= 30, timeout=20, interval=0.02)
        subscription.close()
        reader.join(10)
    assert seen == list(range(30))
    assert subscription.reconnects >= 1


async def test_subscriptions_resume_across_a_server_restart(pg_dsn: str, tmp_path: Path) -> None:
    """A stream and a $all subscription follow a PostgreSQL-backed server that is
    killed and started again on the same port: every event once, in order."""
    port = free_port()
    env = {"EVENTSTREAMING_STORAGE": "postgres", "EVENTSTREAMING_DATABASE_URL": pg_dsn}
    log = tmp_path / "server.log"
    process = await ServerProcess.start(env, log, port=port)
    name = unique_name("restart")
    by_offset: list[int] = []
    by_position: list[int] = []
    try:
        async with AsyncClient(process.address, retry=FAST_RETRY) as client:

            async def follow_stream() -> None:
                async for event in client.subscribe(name, from_offset=0):
                    by_offset.append(event.offset)

            async def follow_all() -> None:
                async for event in client.subscribe(ALL, stream_prefixes=[name]):
                    by_position.append(event.global_position)

            # A stream subscription needs the stream to exist.
            await client.append_to_stream(name, [NewEvent("E") for _ in range(5)])
            tasks = [asyncio.create_task(follow_stream()), asyncio.create_task(follow_all())]
            await wait_until(lambda: len(by_offset) == 5 and len(by_position) == 5, timeout=20)
            process.kill()
            process = await ServerProcess.start(env, log, port=port)
            await client.append_to_stream(name, [NewEvent("E") for _ in range(5)])
            await wait_until(lambda: len(by_offset) >= 10 and len(by_position) >= 10, timeout=30)
            await asyncio.sleep(0.2)  # a duplicate, if any, would arrive now
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        process.kill()
    assert by_offset == list(range(10))
    assert len(by_position) == 10
    assert by_position == sorted(set(by_position))


async def test_tls_and_bearer_tokens(tmp_path: Path) -> None:
    pem, _, _ = make_certificate(tmp_path, "localhost")
    app = servers.loop().run(
        _start_guarded(str(pem.certificate), str(pem.key)),
    )
    address = f"127.0.0.1:{app.port}"
    try:
        name = unique_name()
        with Client(
            address, root_certificates=pem.certificate, server_name="localhost", token="s3cret"
        ) as client:
            client.append_to_stream(name, [NewEvent("E")])
            assert client.get_stream_length(name) == 1
        async with AsyncClient(
            address, root_certificates=pem.certificate_bytes, server_name="localhost", token="x"
        ) as wrong:
            with pytest.raises(Unauthenticated):
                await wrong.get_stream_length(name)
    finally:
        servers.loop().run(app.stop(grace=0))


async def _start_guarded(cert: str, key: str):  # type: ignore[no-untyped-def]
    from server.app import EventStreamingServer
    from tests.conftest import server_settings

    app = EventStreamingServer(
        server_settings("memory", tls_cert_file=cert, tls_key_file=key, auth_tokens="s3cret")
    )
    await app.start()
    return app


def test_event_ids_are_assigned_before_the_first_attempt() -> None:
    from eventstreaming_client._convert import with_ids

    given = uuid.uuid4()
    batch = with_ids([NewEvent("A"), NewEvent("B", event_id=given)])
    assert batch[1].event_id == given
    assert isinstance(batch[0].event_id, uuid.UUID)
    assert with_ids(batch) == batch


def test_backoff_grows_with_jitter_up_to_its_ceiling() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.5, multiplier=2)
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.5, 0.5]):
        samples = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2  # jittered, not always tiny
    assert len(list(policy.delays())) == 5
    assert timedelta(seconds=sum(policy.delays())) <= timedelta(seconds=2.2)

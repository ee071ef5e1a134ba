"""Notification payloads: every stream name once, the sender first, under the limit."""

from __future__ import annotations

import itertools
import uuid

import pytest

from storage.postgres.notifier import MAX_PAYLOAD_BYTES, payloads

SENDER = uuid.uuid4().hex
#: PostgreSQL refuses a NOTIFY payload of this many bytes or more.
POSTGRES_LIMIT = 8000


def names_in(sent: list[str]) -> list[str]:
    """The stream names of every payload, checking each starts with the sender."""
    found: list[str] = []
    for payload in sent:
        sender, *names = payload.split("\n")
        assert sender == SENDER
        assert names, "a payload without a stream name"
        found.extend(names)
    return found


def long_names(count: int, length: int = 200) -> set[str]:
    return {f"{i:06d}-".ljust(length, "x") for i in range(count)}


def test_nothing_to_announce_sends_nothing() -> None:
    assert payloads(SENDER, []) == []


def test_one_name_is_one_payload() -> None:
    assert payloads(SENDER, ["orders"]) == [f"{SENDER}\norders"]


def test_a_few_names_share_one_payload() -> None:
    names = {"orders", "payments", "shipping.v2", "a:b"}
    (payload,) = payloads(SENDER, names)
    assert sorted(names_in([payload])) == sorted(names)


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(long_names(1000), id="1000-names-of-200-chars"),
        pytest.param(long_names(5000, 37), id="5000-names-of-37-chars"),
        pytest.param({f"s{i}" for i in range(20_000)}, id="20000-short-names"),
    ],
)
def test_every_name_appears_once_in_payloads_under_the_limit(names: set[str]) -> None:
    sent = payloads(SENDER, names)
    found = names_in(sent)
    assert len(found) == len(names)
    assert set(found) == names
    for payload in sent:
        assert len(payload.encode()) <= MAX_PAYLOAD_BYTES < POSTGRES_LIMIT


def test_payloads_are_as_few_as_fit() -> None:
    """Each payload but the last is full: its successor's first name would not fit."""
    sent = payloads(SENDER, long_names(1000))
    for payload, following in itertools.pairwise(sent):
        next_name = following.split("\n")[1]
        assert len(payload.encode()) + 1 + len(next_name.encode()) > MAX_PAYLOAD_BYTES
    total = sum(len(p.encode()) for p in sent)
    assert len(sent) <= total // MAX_PAYLOAD_BYTES + 1


def test_a_payload_fills_up_to_the_limit_and_no_further() -> None:
    # 32 bytes of sender, then 201 bytes a name: 39 names fit, the 40th does not.
    assert len(SENDER) == 32
    assert len(payloads(SENDER, long_names(39))) == 1
    assert [len(names_in([p])) for p in payloads(SENDER, long_names(40))] == [39, 1]


def test_the_limit_is_counted_in_bytes() -> None:
    names = {f"{i:04d}-" + "é" * 97 for i in range(300)}  # 199 bytes each, 102 characters
    sent = payloads(SENDER, names)
    assert set(names_in(sent)) == names
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in sent)

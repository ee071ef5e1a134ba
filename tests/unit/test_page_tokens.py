"""Page tokens: what a page starts after survives the trip; anything else is refused."""

from __future__ import annotations

import base64

import pytest

from storage.errors import InvalidPageToken
from storage.page_tokens import (
    DEAD_LETTERS,
    STREAMS,
    decode_page_token,
    decode_position_token,
    encode_page_token,
    encode_position_token,
)


def forged(raw: bytes) -> str:
    """A token made by hand the way a client could: URL-safe base64 of any bytes."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@pytest.mark.parametrize(
    "name",
    ["a", "orders", "a-b_c.d:e", "Z" * 200, "0", "x:y:z", "streams-after:nested"],
)
def test_a_stream_name_survives_the_round_trip(name: str) -> None:
    token = encode_page_token(STREAMS, name)
    assert token
    assert decode_page_token(STREAMS, token) == name


@pytest.mark.parametrize("name", ["a", "A.b:c-d_e", "9" * 200])
def test_any_stream_name_survives_the_round_trip(name: str) -> None:
    assert decode_page_token(STREAMS, encode_page_token(STREAMS, name)) == name


@pytest.mark.parametrize("name", ["é", "名前", "emoji 😀", "\\", "a=b&c", "a\x00", "-a", "a" * 201])
def test_a_token_naming_what_cannot_be_a_stream_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(STREAMS, encode_page_token(STREAMS, name))


@pytest.mark.parametrize("position", [0, 1, 7, 10**6, 2**62, 2**63 - 1])
def test_a_position_survives_the_round_trip(position: int) -> None:
    token = encode_position_token(DEAD_LETTERS, position)
    assert token
    assert decode_position_token(DEAD_LETTERS, token) == position


def test_tokens_of_different_values_differ() -> None:
    names = ["a", "b", "aa", "a-", "A"]
    assert len({encode_page_token(STREAMS, n) for n in names}) == len(names)
    positions = range(50)
    assert len({encode_position_token(DEAD_LETTERS, p) for p in positions}) == 50


def test_tokens_are_plain_text_a_client_can_pass_back() -> None:
    token = encode_page_token(STREAMS, "名前/with spaces")
    assert token.isascii()
    assert token.isprintable()
    assert " " not in token


def test_the_first_page_has_the_empty_token() -> None:
    assert decode_page_token(STREAMS, "") is None
    assert decode_position_token(DEAD_LETTERS, "") == 0


def test_a_token_of_one_kind_is_refused_as_the_other() -> None:
    streams_token = encode_page_token(STREAMS, "orders")
    letters_token = encode_position_token(DEAD_LETTERS, 3)
    with pytest.raises(InvalidPageToken):
        decode_page_token(DEAD_LETTERS, streams_token)
    with pytest.raises(InvalidPageToken):
        decode_position_token(DEAD_LETTERS, streams_token)
    with pytest.raises(InvalidPageToken):
        decode_page_token(STREAMS, letters_token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="word"),
        pytest.param("a", id="one-char"),
        pytest.param("!!!", id="punctuation"),
        pytest.param("%%%", id="percent"),
        pytest.param("été", id="non-ascii"),
        pytest.param("AAAA", id="zero-bytes"),
        pytest.param(forged(b"\xff\xfe\xfd"), id="not-utf8"),
        pytest.param(forged(b"streams-after:"), id="nothing-after-the-kind"),
        pytest.param(forged(b"streams-after"), id="kind-without-colon"),
        pytest.param(forged(b"streams-before:x"), id="other-kind"),
        pytest.param(forged(b"x streams-after:x"), id="kind-not-at-start"),
        pytest.param(forged(b"streams-after:\xff"), id="name-not-utf8"),
    ],
)
def test_a_garbled_stream_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken) as caught:
        decode_page_token(STREAMS, token)
    assert len(token) < 4 or token not in str(caught.value), "a token is never echoed back"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="word"),
        pytest.param(forged(b"dead-letters-after:"), id="empty"),
        pytest.param(forged(b"dead-letters-after:x"), id="letters"),
        pytest.param(forged(b"dead-letters-after:-1"), id="negative"),
        pytest.param(forged(b"dead-letters-after:1.5"), id="fraction"),
        pytest.param(forged(b"dead-letters-after: 1"), id="space"),
        pytest.param(forged(b"dead-letters-after:0x10"), id="hex"),
        pytest.param(forged(b"dead-letters-after:1_000"), id="underscore"),
    ],
)
def test_a_garbled_position_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_position_token(DEAD_LETTERS, token)


# Digits str.isdigit() takes and int() refuses (superscripts), and more digits than
# int() reads (4,300), are refused like any other token not issued here.
@pytest.mark.parametrize(
    "digits",
    [
        pytest.param("²", id="superscript-two"),
        pytest.param("9" * 5000, id="beyond-int-string-limit"),
    ],
)
def test_a_position_token_python_cannot_read_as_an_int_is_refused(digits: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_position_token(DEAD_LETTERS, forged(f"dead-letters-after:{digits}".encode()))

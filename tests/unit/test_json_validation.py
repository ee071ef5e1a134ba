"""JSON payload validation: what PostgreSQL's jsonb takes passes on every backend;
anything else is refused, naming the field."""

from __future__ import annotations

import pytest

from server.validation import InvalidArgument, json_payload

FIELD = "events[3].data"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'{"a": 1, "b": [true, false, null], "c": {"d": "e"}}', id="nested"),
        pytest.param(b"0", id="number"),
        pytest.param(b"-1.5e-3", id="exponent"),
        pytest.param(b"123456789012345678901234567890", id="big-integer"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="true"),
        pytest.param(b' \n\t{"spaced" : 1 }\r\n', id="whitespace"),
        pytest.param('{"é": "ünïcödé ✓ 😀"}'.encode(), id="raw-utf8"),
        pytest.param(b'{"e": "\\u00e9\\u2713"}', id="bmp-escapes"),
        pytest.param(b'{"emoji": "\\ud83d\\ude00"}', id="surrogate-pair-escape"),
        pytest.param(b'{"k\\ud83d\\ude00": 1}', id="surrogate-pair-in-key"),
        pytest.param(b'{"tab": "\\t", "quote": "\\"", "slash": "\\/"}', id="simple-escapes"),
        pytest.param(b'{"one": "\\u0001"}', id="control-escape"),
        pytest.param(b'{"NaN": "Infinity"}', id="constant-names-as-strings"),
        pytest.param(b'{"a": 1, "a": 2}', id="repeated-key"),
    ],
)
def test_a_json_document_is_accepted(data: bytes) -> None:
    json_payload(data, FIELD)  # raises when refused


def refused(data: bytes) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        json_payload(data, FIELD)
    error = caught.value
    assert error.field == FIELD
    assert str(error).startswith(f"{FIELD}: ")
    return error


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"Infinity", id="infinity"),
        pytest.param(b"-Infinity", id="minus-infinity"),
        pytest.param(b'{"x": NaN}', id="nan-in-object"),
        pytest.param(b"[1, Infinity]", id="infinity-in-array"),
        pytest.param(b'{"a": {"b": [-Infinity]}}', id="deep"),
    ],
)
def test_non_standard_constants_are_refused(data: bytes) -> None:
    error = refused(data)
    assert "not valid JSON" in error.problem


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'"\\u0000"', id="string"),
        pytest.param(b'{"a": "x\\u0000y"}', id="value"),
        pytest.param(b'{"a\\u0000": 1}', id="key"),
        pytest.param(b'[[["\\u0000"]]]', id="deep"),
    ],
)
def test_a_nul_escape_is_refused(data: bytes) -> None:
    error = refused(data)
    assert "NUL" in error.problem


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'"\\ud800"', id="high-alone"),
        pytest.param(b'"\\udc00"', id="low-alone"),
        pytest.param(b'"\\ude00\\ud83d"', id="pair-reversed"),
        pytest.param(b'{"a": ["x\\ud83dy"]}', id="deep-value"),
        pytest.param(b'{"\\udfff": 1}', id="key"),
    ],
)
def test_a_lone_surrogate_is_refused(data: bytes) -> None:
    error = refused(data)
    assert "surrogate" in error.problem


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff", id="invalid-byte"),
        pytest.param(b'{"a": "\xe9"}', id="latin-1"),
        pytest.param('{"a": 1}'.encode("utf-16"), id="utf-16"),
        pytest.param(b'"\xed\xa0\x80"', id="encoded-surrogate"),
    ],
)
def test_a_payload_that_is_not_utf8_is_refused(data: bytes) -> None:
    error = refused(data)
    assert "UTF-8" in error.problem


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="unclosed"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
        pytest.param(b'{"a": 1,}', id="trailing-comma"),
        pytest.param(b'{"a": 1} x', id="trailing-text"),
        pytest.param(b'"raw\nnewline"', id="raw-control-character"),
        pytest.param(b'"\x00"', id="raw-nul"),
        pytest.param(b"undefined", id="undefined"),
    ],
)
def test_text_that_is_not_json_is_refused(data: bytes) -> None:
    error = refused(data)
    assert "not valid JSON" in error.problem


def test_the_message_names_the_field_given() -> None:
    with pytest.raises(InvalidArgument) as caught:
        json_payload(b"{", "events[0].data")
    assert caught.value.field == "events[0].data"
    assert "events[0].data" in str(caught.value)

"""Page tokens, the same on every backend.

A token names the last item of the previous page (a stream name for ListStreams, a
dead-letter position for ListDeadLetters); the next page starts after it. Tokens
are opaque to clients, and one issued by one backend or replica works on any other.
A token this service did not issue is refused with :class:`InvalidPageToken`,
whatever it holds (it is never echoed back, nor passed on to a database).
"""

from __future__ import annotations

import base64
import binascii
import re

from storage.errors import InvalidPageToken
from storage.records import STREAM_NAME_RE

STREAMS = "streams-after"
DEAD_LETTERS = "dead-letters-after"

#: Longer than any token this service issues (a 200-character name, base64).
MAX_TOKEN_LENGTH = 400
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_POSITION_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_POSITION = 2**63 - 1


def encode_page_token(kind: str, last: str) -> str:
    raw = f"{kind}:{last}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(kind: str, token: str) -> str | None:
    """What the token says a page starts after; None for the first page ("")."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_RE.fullmatch(token):
        raise InvalidPageToken
    try:
        unpadded = token.rstrip("=")
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        text = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidPageToken from None
    found, separator, last = text.partition(":")
    if found != kind or not separator:
        raise InvalidPageToken
    return last


def decode_page_token(kind: str, token: str) -> str | None:
    """The stream name a page starts after; None for the first page ("")."""
    last = _decode(kind, token)
    if last is not None and not STREAM_NAME_RE.fullmatch(last):
        raise InvalidPageToken
    return last


def encode_position_token(kind: str, position: int) -> str:
    return encode_page_token(kind, str(position))


def decode_position_token(kind: str, token: str) -> int:
    """The position a page starts after; 0 for the first page ("")."""
    last = _decode(kind, token)
    if last is None:
        return 0
    if not _POSITION_RE.fullmatch(last) or int(last) > _MAX_POSITION:
        raise InvalidPageToken
    return int(last)

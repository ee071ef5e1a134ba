"""Page tokens, the same on every backend.

A token names the last item of the previous page (a stream name for ListStreams, a
dead-letter position for ListDeadLetters); the next page starts after it. Tokens
are opaque to clients, and one issued by one backend or replica works on any other.
"""

from __future__ import annotations

import base64
import binascii

from storage.errors import InvalidPageToken

STREAMS = "streams-after"
DEAD_LETTERS = "dead-letters-after"


def encode_page_token(kind: str, last: str) -> str:
    raw = f"{kind}:{last}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(kind: str, token: str) -> str | None:
    """What a page starts after; None for the first page ("")."""
    if not token:
        return None
    prefix = f"{kind}:".encode()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        last = raw.removeprefix(prefix).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidPageToken(token) from None
    if not raw.startswith(prefix) or not last:
        raise InvalidPageToken(token)
    return last


def encode_position_token(kind: str, position: int) -> str:
    return encode_page_token(kind, str(position))


def decode_position_token(kind: str, token: str) -> int:
    """The position a page starts after; 0 for the first page ("")."""
    last = decode_page_token(kind, token)
    if last is None:
        return 0
    if not last.isdigit():
        raise InvalidPageToken(token)
    return int(last)

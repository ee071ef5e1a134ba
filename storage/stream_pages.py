"""Page tokens of ListStreams, the same on every backend.

A token names the last stream of the previous page; the next page starts after it
in name order (code point order, which is also byte order for these names). It is
opaque to clients, and a token from one backend or replica works on any other.
"""

from __future__ import annotations

import base64
import binascii

from storage.errors import InvalidPageToken

_PREFIX = b"streams-after:"


def encode_page_token(last_stream_name: str) -> str:
    raw = _PREFIX + last_stream_name.encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The stream name a page starts after; None for the first page ("")."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        name = raw.removeprefix(_PREFIX).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidPageToken(token) from None
    if not raw.startswith(_PREFIX) or not name:
        raise InvalidPageToken(token)
    return name

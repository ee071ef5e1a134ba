"""Receipts: the name of one delivery of a queue message, the same on every backend.

A receipt carries the message's event id and the id of the delivery (a fresh
random UUID each time a message is leased), so that an acknowledgement, nack or
extension by receipt acts on that delivery only: once the message has been
delivered again, even to the same consumer, the old receipt no longer matches.
Receipts are opaque to clients (base64url of the two UUIDs' bytes); one issued by
one backend or replica works on any other sharing the queue.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from uuid import UUID

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: 32 bytes are 43 characters of base64url, the last holding 4 bits: one of these
#: (its 2 low bits zero) when the text is the one spelling of its bytes.
_LAST = frozenset(_ALPHABET[::4])


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery of the message ``event_id``."""

    event_id: UUID
    delivery_id: UUID

    def __str__(self) -> str:
        raw = self.event_id.bytes + self.delivery_id.bytes
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Receipt:
        """The receipt ``text`` spells; ValueError when this service did not issue it."""
        # validate=True refuses characters outside base64 once "-_" are mapped to
        # "+/", so those two must be refused here.
        if len(text) != 43 or text[-1] not in _LAST or "+" in text or "/" in text:
            raise ValueError("not a receipt")
        try:
            raw = base64.b64decode(text + "=", altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not a receipt") from None
        return cls(UUID(bytes=raw[:16]), UUID(bytes=raw[16:]))

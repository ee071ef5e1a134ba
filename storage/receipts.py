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
import re
from dataclasses import dataclass
from uuid import UUID

#: 32 bytes in unpadded base64url.
_RECEIPT_RE = re.compile(r"[A-Za-z0-9_-]{43}")


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
        if not _RECEIPT_RE.fullmatch(text):
            raise ValueError("not a receipt")
        try:
            raw = base64.urlsafe_b64decode(text + "=")
        except (binascii.Error, ValueError):
            raise ValueError("not a receipt") from None
        if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != text:
            raise ValueError("not a receipt")
        return cls(UUID(bytes=raw[:16]), UUID(bytes=raw[16:]))

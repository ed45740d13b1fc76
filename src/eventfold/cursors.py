"""Opaque, tamper-evident pagination cursors.

A cursor is the keyset position of the last item of a page, signed with an
HMAC so a client cannot forge one that steers a query; a bad one is a 422.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson

from eventfold.errors import FieldError, ValidationFailed


class CursorCodec:
    """Signs and checks cursors with a key derived from the server secret."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"eventfold-cursor\x00" + secret.encode()).digest()

    def encode(self, kind: str, position: Any) -> str:
        """A cursor for ``position`` within a listing of ``kind``."""
        body = orjson.dumps({"k": kind, "p": position})
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).rstrip(b"=").decode()

    def decode(self, kind: str, cursor: str) -> Any:
        """The position in ``cursor``; 422 when it is forged or from another listing."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise _bad() from None
        mac, body = raw[:16], raw[16:]
        if len(cursor) > 2048 or not hmac.compare_digest(
            mac, hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        ):
            raise _bad()
        doc = orjson.loads(body)
        if not isinstance(doc, dict) or doc.get("k") != kind:
            raise _bad()
        return doc.get("p")


def _bad() -> ValidationFailed:
    return ValidationFailed(
        "the cursor is not one this listing issued",
        errors=[FieldError("/after", "invalid cursor; pass the previous page's next value")],
    )

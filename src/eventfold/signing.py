"""Standard Webhooks signatures: what the notifier signs and integrations verify.

The scheme of https://www.standardwebhooks.com (as used by Svix): a secret
``whsec_<base64 key>``; headers ``webhook-id``, ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature`` = space-separated ``v1,<base64 HMAC-SHA256
of "{id}.{timestamp}.{body}">`` entries (several while a secret rotates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from eventfold.errors import Unauthorized

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: How far ``webhook-timestamp`` may be from now (replay protection), as Svix uses.
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureInvalid(Unauthorized):
    """A webhook whose signature, timestamp or headers do not verify (answered 401)."""


def new_secret() -> str:
    """A fresh ``whsec_`` secret holding 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret (ValueError when it is not one)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret holds 24 to 64 bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one message."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(
    secret: str, msg_id: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent as ``msg_id`` now."""
    ts = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> str:
    """Check a received webhook; return its ``webhook-id``.

    Raises :class:`SignatureInvalid` when a header is missing, the timestamp is
    outside ``tolerance`` either way, or no ``v1`` signature matches.
    """
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    given = headers.get("webhook-signature", "")
    if not (msg_id and stamp and given):
        raise SignatureInvalid("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        ts = int(stamp)
    except ValueError:
        raise SignatureInvalid("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise SignatureInvalid("webhook-timestamp is too old or too far in the future")
    expected = sign(secret, msg_id, ts, body).encode()
    for candidate in given.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureInvalid("no webhook-signature matches")

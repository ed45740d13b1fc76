"""Consistency tokens: what a write must be visible after, as log positions.

A token names, per partition of the events topic, the offset of the last
event a write produced. A read carrying it waits until the projector's
checkpoints have passed every one of those offsets.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

import orjson

from eventfold.errors import BadRequest

_PREFIX = "ct1."


def encode(positions: Mapping[int, int]) -> str:
    """A token for the given ``{partition: offset}`` (highest offset per partition)."""
    body = orjson.dumps({str(p): o for p, o in sorted(positions.items())})
    return _PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def from_offsets(pairs: Iterable[tuple[int, int]]) -> str:
    """A token covering every ``(partition, offset)`` in ``pairs``."""
    highest: dict[int, int] = {}
    for partition, offset in pairs:
        highest[partition] = max(offset, highest.get(partition, -1))
    return encode(highest)


def decode(token: str) -> dict[int, int]:
    """The ``{partition: offset}`` of a token; a malformed one is a 400."""
    if not token.startswith(_PREFIX) or len(token) > 4096:
        raise BadRequest("X-Consistency-Token is not a token this server issued")
    raw = token[len(_PREFIX) :]
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        positions = {int(p): o for p, o in doc.items()}
    except (ValueError, TypeError, AttributeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest("X-Consistency-Token is not a token this server issued") from None
    # Offsets must be plain non-negative integers (JSON true or 1.5 are not).
    if any(type(o) is not int or p < 0 or o < 0 for p, o in positions.items()):
        raise BadRequest("X-Consistency-Token is not a token this server issued")
    return positions

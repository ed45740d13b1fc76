"""Segments of one partition: where they close, what their objects are called and hold.

Every decision here is a function of the log alone (offsets, record bytes and
record timestamps), never of the clock of the run: a re-run from the same
checkpoint cuts the same segments and writes byte-identical objects under the
same keys, so a restart overwrites a segment instead of duplicating it.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from eventfold.archive import object_key
from eventfold.ids import is_valid

#: Where events whose tenant cannot be read go (not a valid tenant id, so no clash).
UNREADABLE = "_unreadable"


@dataclass(slots=True)
class Line:
    """One archived event: its offset, its tenant and its JSON line (no newline)."""

    offset: int
    tenant: str
    text: bytes
    #: The line is its tenant's ``tenant.deleted``: the tenant's archive goes.
    ends_tenant: bool = False


@dataclass(slots=True)
class Segment:
    """The open (or just closed) run of consecutive records of one partition."""

    partition: int
    first_offset: int
    first_timestamp_ms: int
    day: str
    last_offset: int = -1
    size: int = 0
    lines: list[Line] = field(default_factory=list)

    def add(self, line: Line) -> None:
        """Append ``line`` (the caller decided it belongs here)."""
        self.lines.append(line)
        self.last_offset = line.offset
        self.size += len(line.text) + 1


@dataclass(frozen=True, slots=True)
class TenantObject:
    """One tenant's part of a closed segment, as it is stored."""

    tenant: str
    key: str
    body: bytes
    first_offset: int
    last_offset: int
    events: int

    def manifest_entry(self, segment: Segment) -> dict[str, object]:
        """This object's line in its tenant's manifest for the partition."""
        return {
            "key": self.key,
            "day": segment.day,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "events": self.events,
            "bytes": len(self.body),
        }


def day_of(timestamp_ms: int) -> str:
    """The UTC day of a record timestamp, as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, tz=UTC).strftime("%Y-%m-%d")


def should_close(
    segment: Segment, line_size: int, timestamp_ms: int, *, max_bytes: int, max_seconds: float
) -> bool:
    """Whether ``segment`` closes before a record of ``line_size`` bytes stamped ``timestamp_ms``.

    By size (the record would take it past ``max_bytes``; a record larger than
    that makes a segment on its own), by time (the record is ``max_seconds``
    or more younger than the segment's first) and by day (a segment belongs to
    one ``date=`` folder).
    """
    if not segment.lines:
        return False
    return (
        segment.size + line_size + 1 > max_bytes
        or timestamp_ms - segment.first_timestamp_ms >= max_seconds * 1000
        or day_of(timestamp_ms) != segment.day
    )


def to_line(offset: int, value: bytes | None) -> Line | None:
    """The archive line of a log record; None for an empty record (nothing to keep)."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        # Kept all the same (the archive is the whole log), as a JSON string of the bytes.
        text = orjson.dumps({"offset": offset, "raw": value.decode("utf-8", "replace")})
        return Line(offset, UNREADABLE, text)
    tenant = doc.get("tenant")
    if not isinstance(tenant, str) or not is_valid("tenant", tenant):
        tenant = UNREADABLE
    # The log's own bytes when they are one line already (the gateway writes compact JSON).
    text = value if b"\n" not in value and b"\r" not in value else orjson.dumps(doc)
    return Line(offset, tenant, text, ends_tenant=doc.get("type") == "tenant.deleted")


def tenant_objects(segment: Segment) -> list[TenantObject]:
    """Split a closed segment per tenant: gzip-jsonl bodies with a fixed gzip header."""
    by_tenant: dict[str, list[Line]] = defaultdict(list)
    for line in segment.lines:
        by_tenant[line.tenant].append(line)
    out = []
    for tenant in sorted(by_tenant):
        lines = by_tenant[tenant]
        raw = b"".join(line.text + b"\n" for line in lines)
        first, last = lines[0].offset, lines[-1].offset
        out.append(
            TenantObject(
                tenant=tenant,
                key=object_key(tenant, segment.day, segment.partition, first, last),
                # mtime=0: the same lines always compress to the same bytes.
                body=gzip.compress(raw, compresslevel=6, mtime=0),
                first_offset=first,
                last_offset=last,
                events=len(lines),
            )
        )
    return out


def merge_manifest(
    current: bytes | None, tenant: str, partition: int, entries: list[dict[str, object]]
) -> bytes:
    """``current`` manifest with ``entries`` added (a rewritten segment replaces its line)."""
    segments: dict[str, dict[str, object]] = {}
    if current:
        doc = orjson.loads(current)
        segments = {str(s["key"]): s for s in doc.get("segments", [])}
    for entry in entries:
        segments[str(entry["key"])] = entry
    ordered = sorted(segments.values(), key=lambda s: int(str(s["first_offset"])))
    return orjson.dumps(
        {"tenant": tenant, "partition": partition, "segments": ordered},
        option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2,
    )

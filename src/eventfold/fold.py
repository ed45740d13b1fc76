"""The fold of record events, as pure functions (no I/O, no clock).

Replaying the same events over the same starting state always yields the same
state: times come from the events, never from the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from eventfold.mergepatch import merge_patch

RECORD_TYPES = frozenset({"record.upserted", "record.patched", "record.deleted"})


@dataclass(frozen=True, slots=True)
class Record:
    """One record's projected state; ``data is None`` marks a deleted record.

    Deleted records keep their version (a tombstone), so a record created again
    continues counting and a stale cached copy can never look newer.
    """

    version: int
    data: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @property
    def live(self) -> bool:
        """Whether the record exists (was not deleted)."""
        return self.data is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event: applied, or rejected with a reason."""

    status: Literal["applied", "rejected"]
    reason: str | None = None


APPLIED = Outcome("applied")


def live_version(record: Record | None) -> int:
    """The version a conditional write compares with: 0 when absent or deleted."""
    return record.version if record is not None and record.live else 0


def apply(
    record: Record | None,
    event_type: str,
    data: Any,
    *,
    at: datetime,
    expected_version: int | None = None,
) -> tuple[Record | None, Outcome]:
    """Fold one ``record.*`` event into ``record``; return the new state and the outcome.

    A rejected event leaves the state as it was.
    """
    if event_type not in RECORD_TYPES:
        raise ValueError(f"not a record event type: {event_type}")
    current = live_version(record)
    if expected_version is not None and expected_version != current:
        return record, Outcome(
            "rejected", f"expected version {expected_version}, record is at version {current}"
        )
    next_version = (record.version if record is not None else 0) + 1
    if event_type == "record.upserted":
        created = record.created_at if record is not None and record.live else at
        return Record(next_version, dict(data or {}), created, at), APPLIED
    if record is None or not record.live:
        return record, Outcome("rejected", "record does not exist")
    if event_type == "record.patched":
        patched = merge_patch(record.data, data or {})
        return replace(record, version=next_version, data=patched, updated_at=at), APPLIED
    return replace(record, version=next_version, data=None, updated_at=at), APPLIED

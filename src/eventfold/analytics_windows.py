"""Tumbling windows and the keys analytics results live under (pure functions).

A count is kept per (tenant, window size, window start, type, collection, source
partition): the partition is part of the key because a faust table's changelog
partition is the partition of the event that wrote it, so two partitions must
never write the same key (a rebalance would restore only one of them). Readers
sum over partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Window sizes by their public name (``window=1m|1h``).
WINDOWS: dict[str, int] = {"1m": 60, "1h": 3600}
SEP = "\x1f"


def window_start(ts: float, size: int) -> int:
    """Start (epoch seconds) of the ``size``-second tumbling window holding ``ts``."""
    return int(ts // size) * size


def collection_of(subject: str | None) -> str:
    """The collection of a record subject ``collection/id``; ``""`` when there is none."""
    if not subject or "/" not in subject:
        return ""
    return subject.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class CountKey:
    """One counter of the ``counts`` table."""

    tenant: str
    window: str
    start: int
    type: str
    collection: str
    partition: int

    def encode(self) -> str:
        """The table key."""
        return SEP.join(
            (
                self.tenant,
                self.window,
                str(self.start),
                self.type,
                self.collection,
                str(self.partition),
            )
        )

    @classmethod
    def decode(cls, key: str) -> CountKey:
        """The inverse of :meth:`encode`."""
        tenant, window, start, type_, collection, partition = key.split(SEP)
        return cls(tenant, window, int(start), type_, collection, int(partition))

    @property
    def field(self) -> str:
        """The field of this counter in its window's Redis hash."""
        return SEP.join((self.type, self.collection, str(self.partition)))


def touched_key(tenant: str, window: str, start: int, collection: str, subject: str) -> str:
    """The ``touched`` table key: this record had an event in this window."""
    return SEP.join((tenant, window, str(start), collection, subject))


def decode_touched(key: str) -> tuple[str, str, int, str, str]:
    """``(tenant, window, start, collection, subject)`` of a ``touched`` key."""
    tenant, window, start, collection, subject = key.split(SEP, 4)
    return tenant, window, int(start), collection, subject


#: Seconds past the grace before a window's state is pruned from the tables: a late
#: check and a prune on two workers with slightly different clocks still agree.
SETTLE_MARGIN = 30


def settled(window: str, start: int, grace: float, now: float) -> bool:
    """Whether no event can change this window any more (closed longer than the grace ago)."""
    return start + WINDOWS[window] + grace + SETTLE_MARGIN < now


def window_key(tenant: str, window: str, start: int) -> str:
    """Redis hash of one tenant's window: field ``type␟collection␟partition`` → count."""
    return f"ef:{tenant}:analytics:{window}:{start}"


def records_key(tenant: str, window: str, start: int, collection: str) -> str:
    """Redis set of the subjects of ``collection`` with an event in this window."""
    return f"ef:{tenant}:analytics:{window}:{start}:records:{collection}"


def index_key(tenant: str, window: str) -> str:
    """Redis sorted set of a tenant's window starts (score = start) that have counts."""
    return f"ef:{tenant}:analytics:{window}:index"

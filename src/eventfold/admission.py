"""Bounds on the requests one HTTP process answers at once: in flight, and waiting per tenant."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from eventfold.errors import TooManyRequests


@dataclass(slots=True)
class Admission:
    """How many requests the process is answering, and how many it may (0: no limit).

    Past the limit a request is answered 503 at once instead of queueing: under
    an overload every queued request holds its buffers, tasks and waits, and its
    answer comes too late to help anyone; the client's retry after
    ``Retry-After`` does. Measured with 700 write+read pairs/s offered to a
    machine that completes ~450: the API peaked at 117 MB without a limit,
    87-91 MB at 512, 80-83 MB at 256 (the default), its read p50 1.9 s -> 0.6 s.
    """

    limit: int
    in_flight: int = 0


@dataclass(slots=True)
class WaitSlots:
    """Consistency waits in flight per tenant, at most ``limit`` each (0: no limit).

    A wait holds its request (and its in-flight slot) for up to
    ``consistency_wait_seconds``: without a cap, one tenant's reads carrying
    tokens the projection is slow to reach could hold every slot of the process.
    Waits whose tenant is not known yet (an API key not projected yet) share the
    entry ``""``.
    """

    limit: int
    taken: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def take(self, tenant: str) -> Iterator[None]:
        """Hold one of ``tenant``'s slots; :class:`TooManyRequests` when none is free."""
        held = self.taken.get(tenant, 0)
        if self.limit and held >= self.limit:
            raise TooManyRequests(
                f"{self.limit} reads of this tenant are already waiting for the projection; "
                "retry shortly",
                headers={"Retry-After": "1"},
            )
        self.taken[tenant] = held + 1
        try:
            yield
        finally:
            left = self.taken[tenant] - 1
            if left:
                self.taken[tenant] = left
            else:
                del self.taken[tenant]

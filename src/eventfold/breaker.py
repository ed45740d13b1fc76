"""A circuit breaker: stop calling a dependency that keeps failing, probe it after a cooldown.

Closed, it lets every call through and counts failures in a row; at ``failures``
it opens, and :meth:`Breaker.allow` says no at once (the caller takes its
fallback: PostgreSQL instead of the record cache, unlimited instead of a rate
limit, a publish without the dedup lookup). After ``cooldown`` seconds it is
half-open: one caller is let through as a probe, whose success closes it and
whose failure opens it for another cooldown (a probe that never reports, its
caller cancelled, is given up after a cooldown and another caller probes).
Used by the record cache, the rate limiter and the publisher's dedup memory
(all in front of Redis).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("eventfold.breaker")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


class Breaker:
    """A circuit breaker: closed, open after ``failures`` in a row, half-open after a cooldown.

    ``name`` and ``fallback`` go into the log lines of its changes (``fallback``
    says what callers do while it is open). ``on_change`` is called with the new
    state on every change (a metric follows it).
    """

    def __init__(
        self,
        *,
        failures: int = 3,
        cooldown: float = 2.0,
        name: str = "breaker",
        fallback: str = "",
        on_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or cooldown < 0:
            raise ValueError("a breaker opens after at least one failure, for cooldown >= 0")
        self.threshold = failures
        self.cooldown = cooldown
        self.name = name
        self.fallback = fallback
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        self.on_change = on_change
        self._clock = clock

    @property
    def state_name(self) -> str:
        """``closed``, ``half-open`` or ``open``."""
        return _STATE_NAMES[self.state]

    def allow(self) -> bool:
        """Whether a call may go to the dependency now (claims the probe when half-open)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN and (
            not self._probing or self._clock() - self._probe_at >= self.cooldown
        ):
            self._probing = True
            self._probe_at = self._clock()
            return True
        return False

    def success(self) -> None:
        """A call worked: the breaker closes."""
        self._failures = 0
        self._probing = False
        if self.state != CLOSED:
            log.info(f"{self.name} breaker closed", extra={"breaker": self.name})
            self._set(CLOSED)

    def failure(self, error: BaseException | None = None) -> None:
        """A call failed or timed out (with ``error``): count it, open past the threshold
        or a failed probe. The line saying it opened names the error that opened it."""
        self._failures += 1
        self._probing = False
        if self.state == HALF_OPEN or (self.state == CLOSED and self._failures >= self.threshold):
            if self.state == CLOSED:
                log.warning(
                    f"{self.name} breaker open" + (f": {self.fallback}" if self.fallback else ""),
                    extra={"breaker": self.name, "error": repr(error) if error else None},
                )
            self._opened_at = self._clock()
            self._set(OPEN)

    def _set(self, state: int) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(state)

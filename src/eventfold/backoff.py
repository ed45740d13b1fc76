"""Exponential backoff with jitter: the one way Eventfold waits before trying again.

Every retry loop (a dependency that is away, a client that does not start, a
batch that failed on a lost connection) waits with a :class:`Backoff`: the pause
doubles from ``initial`` up to ``cap`` and each one is spread by a random factor
(0.5-1.5 by default) so processes that lost a dependency together do not come
back in lockstep. :meth:`Backoff.reset` starts over after a success.

``retry_delay(attempt, base, cap)`` is the same rule for a caller that stores the
number of failures instead of a running pause (an integration's sync runs), and
:func:`retrying` the whole loop for a call to retry while its dependency is away
(a client's start, a connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("eventfold.backoff")
T = TypeVar("T")

#: The spread of each pause: a uniform factor in this range.
JITTER = (0.5, 1.5)


def jittered(seconds: float, jitter: tuple[float, float] = JITTER) -> float:
    """``seconds`` spread by a uniform factor in ``jitter``."""
    return seconds * random.uniform(*jitter)  # noqa: S311 - spreading retries, not secrets


def retry_delay(
    attempt: int, base: float, cap: float, jitter: tuple[float, float] = JITTER
) -> float:
    """The jittered pause before retry number ``attempt`` (1 for the first): ``base * 2**(n-1)``,
    at most ``cap`` before the jitter."""
    return jittered(min(cap, base * 2 ** max(0, attempt - 1)), jitter)


class Backoff:
    """Pauses that double from ``initial`` to ``cap``, each jittered.

    ``factor`` is the growth per pause; ``jitter`` the range of the random factor
    each pause is multiplied by (``(1.0, 1.0)``: none).
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: tuple[float, float] = JITTER,
    ) -> None:
        if initial < 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 <= initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._current = initial

    @property
    def current(self) -> float:
        """The pause (before jitter) the next :meth:`next` is based on."""
        return self._current

    def next(self) -> float:
        """The next pause in seconds (jittered); the one after it is ``factor`` times longer."""
        pause = jittered(self._current, self.jitter)
        self._current = min(self._current * self.factor, self.cap)
        return pause

    def reset(self) -> None:
        """Start again from ``initial`` (after a success, or a new incident)."""
        self._current = self.initial

    async def sleep(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the next pause, or until ``stop`` is set; True when ``stop`` ended the wait."""
        pause = self.next()
        if stop is None:
            await asyncio.sleep(pause)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
            return True
        return stop.is_set()


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str,
    stop: asyncio.Event | None = None,
    attempts: int | None = None,
) -> T:
    """``await call()``, again after each failure ``retry_on`` accepts, with ``backoff``.

    Gives up, raising the last error, on a failure ``retry_on`` refuses, once
    ``attempts`` calls failed, or once ``stop`` is set. ``what`` names the call in
    the warning each retry logs (``"kafka not reachable, retrying"``).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not retry_on(exc) or attempt == attempts or (stop is not None and stop.is_set()):
                raise
            log.warning(f"{what}, retrying", extra={"error": repr(exc), "attempt": attempt})
        await backoff.sleep(stop)

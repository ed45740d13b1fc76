"""Progress of a long phase: a live line on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Progress:
    """Reports ``done`` of ``total`` with rate and ETA, at most every half second."""

    label: str
    total: int
    unit: str = "events"
    _t0: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _tty: bool = field(default_factory=lambda: sys.stderr.isatty())

    def update(self, done: int) -> None:
        """Show progress (rate-limited: every 0.5 s on a terminal, every 5 s otherwise)."""
        now = time.monotonic()
        if now - self._last < (0.5 if self._tty else 5.0):
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        share = done / self.total if self.total else 1.0
        line = (f"{self.label}: {done:,}/{self.total:,} {self.unit} ({share:.0%})"
                f"  {rate:,.0f}/s  ETA {eta:,.0f} s")  # fmt: skip
        if self._tty:
            bar = "#" * int(30 * share)
            sys.stderr.write(f"\r[{bar:<30}] {line}\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self, done: int) -> None:
        """Finish the line with the final count and rate."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        end = "\n" if self._tty else ""
        sys.stderr.write(f"{end if self._tty else ''}")
        sys.stderr.write(f"{self.label}: {done:,} {self.unit} in {elapsed:.1f} s"
                         f" ({done / elapsed:,.0f}/s)\n")  # fmt: skip
        sys.stderr.flush()

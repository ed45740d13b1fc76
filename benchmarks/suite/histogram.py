"""An HDR-style latency histogram: log-linear buckets, bounded relative error.

Recording is O(1) and memory is bounded whatever the count (unlike a list of
samples); quantiles are exact to within 1 % of the value, as HdrHistogram with
two significant digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Bucket width relative to the value: 1 %.
_GROWTH = 1.01
_LOG = math.log(_GROWTH)
#: Values are recorded in microseconds; below 1 µs counts as 1 µs.
_FLOOR_US = 1.0


@dataclass(slots=True)
class Histogram:
    """Counts of latencies (seconds in, milliseconds out) in 1 %-wide buckets."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: float = 0.0

    def record(self, seconds: float) -> None:
        """Count one latency."""
        us = max(seconds * 1e6, _FLOOR_US)
        bucket = int(math.log(us) / _LOG)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1
        self.max_us = max(self.max_us, us)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one."""
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) in milliseconds (upper edge of its bucket)."""
        if not self.total:
            return math.nan
        if q >= 1.0:
            return self.max_us / 1000
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(_GROWTH ** (bucket + 1), self.max_us) / 1000
        return self.max_us / 1000

    def summary(self) -> dict[str, float]:
        """p50, p90, p99, p99.9 and max in milliseconds (rounded to 0.01 ms)."""
        return {
            name: round(self.quantile_ms(q), 2)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999),
                            ("max", 1.0))
        }  # fmt: skip

    def cdf(self) -> list[tuple[float, float]]:
        """(latency ms, fraction at or below) points for plotting."""
        points: list[tuple[float, float]] = []
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            points.append((_GROWTH ** (bucket + 1) / 1000, seen / self.total))
        return points

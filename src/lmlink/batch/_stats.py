"""Bounded statistics for a batch run, pure: percentiles without keeping every value.

A run of ten million items cannot keep ten million latencies to sort at the end.
:class:`Histogram` counts values in logarithmic buckets, each 2 % wider than the one below
(the idea of DDSketch and HdrHistogram), and reports a bucket's geometric middle, so any
percentile it gives is within 1 % of a value the exact percentile lies next to (relative
error at most 1 %, whatever the spread of the values). Memory: one counter per bucket in
use; from a microsecond to a day that is at most 1,290 buckets. Counts, sums, the minimum
and the maximum are exact.
"""

from __future__ import annotations

import math

__all__ = ["Histogram"]

_GAMMA = 1.02  # bucket i holds (GAMMA**(i-1), GAMMA**i]
_LOG_GAMMA = math.log(_GAMMA)
_SMALLEST = 1e-6  # values at or below this share one bucket


class Histogram:
    """Counts of positive values in log buckets; percentiles within 1 %.

    >>> h = Histogram()
    >>> for v in (0.1, 0.2, 0.3, 0.4): h.add(v)
    >>> h.count, round(h.percentile(50), 2)
    (4, 0.2)
    """

    __slots__ = ("_buckets", "count", "high", "low", "total")

    #: The most a reported percentile can differ, relatively, from a value in its bucket.
    relative_error = (_GAMMA - 1) / 2

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, value: float) -> None:
        """Count ``value`` (seconds, tokens, ...; negative values count as 0)."""
        key = (
            math.ceil(math.log(value) / _LOG_GAMMA)
            if value > _SMALLEST
            else math.ceil(math.log(_SMALLEST) / _LOG_GAMMA)
        )
        buckets = self._buckets
        buckets[key] = buckets.get(key, 0) + 1
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) by nearest rank, within 1 %; None if empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if seen >= rank:
                middle = 2 * _GAMMA**key / (1 + _GAMMA)
                return min(max(middle, self.low), self.high)
        return self.high  # pragma: no cover - rank <= count

    @property
    def mean(self) -> float | None:
        """The exact mean; None if empty."""
        return self.total / self.count if self.count else None

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, buckets={len(self._buckets)})"

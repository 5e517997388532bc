"""Adaptive concurrency, pure: how many requests may be in flight right now.

AIMD, as TCP congestion control does it (RFC 5681 §3.1): start at the ceiling, halve on a
sign of overload (429, 503, a timeout), and add one after a full window of successes (as many
successes in a row as the current limit), never above the ceiling or below the floor.

Every request that starts gets the limiter's current *epoch*; a decrease starts a new epoch,
and only a request started in the current epoch can cause another decrease. A burst of 429s
from requests that were all sent before the first one came back counts as one signal, not
eight, so one bad moment halves the limit once instead of driving it to the floor.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["AIMDLimiter", "Outcome"]


class Outcome(Enum):
    """How a request ended, as far as the limiter cares."""

    OK = "ok"
    OVERLOAD = "overload"  # 429, 503 (not loading), timeout: the server wants less
    NEUTRAL = "neutral"  # an error that says nothing about load (400, a bad answer, ...)


class AIMDLimiter:
    """Additive-increase, multiplicative-decrease limit on requests in flight. No I/O.

    >>> lim = AIMDLimiter(8)
    >>> ticket = lim.try_start()        # None when the limit is reached
    >>> lim.finish(ticket, Outcome.OVERLOAD)
    >>> lim.limit
    4
    """

    __slots__ = ("_streak", "ceiling", "decreases", "epoch", "floor", "in_flight", "limit")

    def __init__(self, ceiling: int, *, floor: int = 1) -> None:
        if ceiling < 1 or floor < 1 or floor > ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        self.ceiling = ceiling
        self.floor = floor
        self.limit = ceiling
        self.in_flight = 0
        self.epoch = 0
        self.decreases = 0
        self._streak = 0

    def try_start(self) -> int | None:
        """Count a request as started and return its ticket, or None if at the limit."""
        if self.in_flight >= self.limit:
            return None
        self.in_flight += 1
        return self.epoch

    def finish(self, ticket: int, outcome: Outcome) -> None:
        """Count the request that got ``ticket`` as finished with ``outcome``."""
        if self.in_flight <= 0:
            raise RuntimeError("finish() without a matching try_start()")
        self.in_flight -= 1
        if outcome is Outcome.OK:
            self._streak += 1
            if self._streak >= self.limit and self.limit < self.ceiling:
                self.limit += 1
                self._streak = 0
        elif outcome is Outcome.OVERLOAD:
            self._streak = 0
            if ticket == self.epoch:
                self.limit = max(self.floor, self.limit // 2)
                self.epoch += 1
                self.decreases += 1

    def __repr__(self) -> str:
        return (
            f"AIMDLimiter(limit={self.limit}, ceiling={self.ceiling}, in_flight={self.in_flight})"
        )

"""Adaptive concurrency, pure: how many requests may be in flight right now.

Two limiters, both plain objects with no I/O and no clock of their own (time comes in as an
argument), so tests drive them on simulated servers:

- :class:`AdaptiveLimiter`, the batch runner's default, finds the server's knee: the number
  of requests in flight past which more only adds latency. See its docstring.
- :class:`AIMDLimiter`: AIMD, as TCP congestion control does it (RFC 5681 §3.1): start at
  the ceiling, halve on a sign of overload (429, 503, a timeout), and add one after a full
  window of successes (as many successes in a row as the current limit), never above the
  ceiling or below the floor.

Every request that starts gets the limiter's current *epoch*; a decrease starts a new epoch,
and only a request started in the current epoch can cause another decrease. A burst of 429s
from requests that were all sent before the first one came back counts as one signal, not
eight, so one bad moment halves the limit once instead of driving it to the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = ["AUTO_CEILING", "AIMDLimiter", "AdaptiveLimiter", "Outcome", "Ticket"]


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


#: The most requests in flight the adaptive limiter ever allows when no ceiling is given.
AUTO_CEILING = 1024

_GROW_E = 0.15  # elasticity of throughput to concurrency below which more is not worth it
_START_E = 0.1  # the same for a doubling at startup (a bigger step: less noise)
_CHEAP_S = 0.01  # below this latency, more in flight is worth it while throughput grows at all
_CHEAP_E = 0.05
_PROBE_GAIN = 1.5  # a probe runs one window at 1.5x (or 1/1.5x) the cruising limit
_CRUISE_WINDOWS = 4  # windows at the cruising limit between two probes
_BUSY = 0.75  # a window whose mean in-flight stayed below 75 % of its limit says nothing
_BETA = 0.5  # multiplicative decrease on overload
_MAX_PAUSE = 60.0  # a Retry-After longer than this is capped (seconds)
_CHANGED = 1.25  # a cruise window this much faster or slower than the last: re-probe now
_STARTUP_SAMPLES = 4  # doubling is a big step: a few latencies tell it apart
_MIN_WINDOW_S = 0.1  # sub-millisecond answers (a cache, a tiny model) need more of them
_CALM_PER_SLOT = 2  # answers per slot since the last refusal that make the next one a lone one
_ROUND_TRIPS = 8  # at a low limit a window needs no more answers than this many per slot


@dataclass(frozen=True, slots=True)
class Ticket:
    """What :meth:`AdaptiveLimiter.try_start` hands out and :meth:`~AdaptiveLimiter.finish`
    takes back: when the request started, under which window and overload epoch."""

    epoch: int
    window: int
    started: float


@dataclass(frozen=True, slots=True)
class _Sample:
    """One measurement window: ``level`` allowed, ``busy`` in flight on average (time
    weighted), ``latency`` the mean of its requests; throughput is ``busy / latency``."""

    level: int
    busy: float
    latency: float

    @property
    def rate(self) -> float:
        return self.busy / self.latency if self.latency > 0 else math.inf


def _verdict(low: _Sample, high: _Sample, least: float = _GROW_E) -> str:
    """Which of two windows' concurrencies is better: ``"up"`` when the higher one served
    enough more to be worth its latency (elasticity at least ``least``), ``"down"`` when
    it did not, ``"same"`` when the windows cannot tell.

    Answers that take under 10 ms (a cache, a tiny model, a fast server) cost no latency
    worth saving: there a gain of 0.05 is worth going up for, and only a loss (below -0.05)
    is a reason to come down."""
    e = _elasticity(low, high)
    if e is None:
        return "same"
    if high.latency < _CHEAP_S:
        return "up" if e >= _CHEAP_E else "down" if e < -_CHEAP_E else "same"
    return "up" if e >= least else "down"


def _elasticity(low: _Sample, high: _Sample) -> float | None:
    """How much throughput grew for the concurrency added, in logs: 1 when it grew in
    proportion (a server with idle slots), 0 when it did not grow (requests only queue).
    None when the two windows did not differ enough in concurrency to tell."""
    spread = math.log(high.busy / low.busy) if low.busy > 0 and high.busy > 0 else 0.0
    if spread < 0.1:
        return None
    if high.latency <= 0 or low.latency <= 0:
        return 1.0
    return 1.0 - math.log(high.latency / low.latency) / spread


class AdaptiveLimiter:
    """Finds and follows the concurrency where a server's throughput stops growing. No I/O.

    It measures in *windows*: after each change of the limit, once the first request started
    under the new limit is back (the old ones have cleared), the requests started from then
    on are timed until ``max(min_samples, limit)`` of them have finished (4 in startup), and
    for at least 0.1 s. By Little's
    law the throughput of a window is the mean number in flight over the mean latency, so
    only latencies are needed (errors that come back fast do not look like speed). Between
    two windows at concurrencies ``c1 < c2`` the *elasticity* ``ln(x2/x1) / ln(c2/c1)`` of
    throughput ``x`` says whether the extra requests were served (near 1: the server had
    idle capacity) or only queued (near 0).

    - *Startup*: from ``initial`` the limit doubles every window while the elasticity stays
      at 0.1 or more (slow start, as in TCP and BBR); at the first window where doubling
      bought less, it settles on the previous level. Where answers take under 10 ms,
      latency is not worth saving: 0.05 is enough to go up, and only a loss brings the
      limit down.
    - *Cruise and probe*: it holds that level for four windows, then probes one window at
      1.5 times it, or at a third less, alternately; a step is worth it at an elasticity of
      0.15 (BBR's gain cycling, with the
      latency-gradient test of Vegas and Netflix's Gradient limiter in elasticity form). A
      probe up that served the extra requests, or a probe down that lost nothing, moves the
      limit and probes again the same way at once; so the limit follows a server that
      changes (another client, a reloaded model) without being told.
    - *Overload* (429, 503, a timeout): the limit halves at once (multiplicative decrease),
      once per burst: only a request started after the last decrease can cause another.
      A lone refusal after a long calm (two answers per slot since the last one) only
      pauses for its Retry-After: refusals that have nothing to do with load (a proxy's
      rate limiter) must not ratchet the limit down; a second one soon after halves it.
      Then it starts again from there, doubling up to one below the level that overloaded.
      A ``retry_after`` holds every new request back until it has passed (capped at 60 s).

    Scale-free: it compares ratios, so a slow model and a fast one give the same decisions
    for the same server shape.

    >>> lim = AdaptiveLimiter(ceiling=64)
    >>> ticket = lim.try_start(now=0.0)          # None when at the limit (or paused)
    >>> lim.finish(ticket, Outcome.OK, now=0.8)
    >>> lim.limit, lim.low, lim.high
    (1, 1, 1)
    """

    def __init__(
        self,
        ceiling: int = AUTO_CEILING,
        *,
        initial: int = 1,
        floor: int = 1,
        min_samples: int = 32,
        now: float = 0.0,
    ) -> None:
        if ceiling < 1 or floor < 1 or floor > ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, not {min_samples}")
        self.ceiling = ceiling
        self.floor = floor
        self.in_flight = 0
        self.epoch = 0
        self.decreases = 0
        self.probes = 0
        self.paused_until = -math.inf
        self.pauses = 0  # Retry-After pauses taken, and the longest (what a summary reports)
        self.longest_pause = 0.0
        self.limit = min(ceiling, max(floor, initial))
        self.cruise = self.limit  # the level held between probes; where it settled
        self.low = self.high = self.limit  # the range the limit took (probes included)
        self._min_samples = min_samples
        self._phase = "startup"  # "startup", "cruise", "up" or "down" (a probe)
        self._top = ceiling  # startup doubles up to this
        self._next_probe = "down"
        self._cruised = 0  # windows at the cruising level since the last probe
        self._calm = 0  # answers since the last decrease
        self._last: _Sample | None = None  # the last startup or cruise window
        self._window = 0
        self._measuring: float | None = now  # nothing in flight yet: measure at once
        self._opened = now
        self._stamp = now  # when in_flight last changed
        self._area = 0.0  # integral of in_flight over the window
        self._samples = 0
        self._latency_sum = 0.0

    # -- the runner's side ----------------------------------------------------------------

    def try_start(self, now: float) -> Ticket | None:
        """Count a request as started at ``now`` and return its ticket, or None when the
        limit is reached or a Retry-After is still running (see :meth:`wait_s`)."""
        if self.in_flight >= self.limit or now < self.paused_until:
            return None
        self._advance(now)
        self.in_flight += 1
        return Ticket(self.epoch, self._window, now)

    def wait_s(self, now: float) -> float:
        """Seconds until a Retry-After pause ends (0 when there is none)."""
        return max(0.0, self.paused_until - now)

    def finish(
        self, ticket: Ticket, outcome: Outcome, now: float, *, retry_after: float | None = None
    ) -> None:
        """Count the request of ``ticket`` as ended at ``now`` with ``outcome``;
        ``retry_after`` is the server's Retry-After in seconds, if it sent one."""
        if self.in_flight <= 0:
            raise RuntimeError("finish() without a matching try_start()")
        self._advance(now)
        self.in_flight -= 1
        if outcome is Outcome.OVERLOAD:
            if retry_after is not None and retry_after > 0:
                pause = min(retry_after, _MAX_PAUSE)
                self.paused_until = max(self.paused_until, now + pause)
                self.pauses += 1
                self.longest_pause = max(self.longest_pause, pause)
            if ticket.epoch == self.epoch:
                if self._calm >= _CALM_PER_SLOT * self.limit:
                    # One refusal after a long calm says little about load (a proxy's
                    # random 429s, a passing hiccup): its Retry-After is honoured, and a
                    # second one soon after is what brings the limit down.
                    self._calm = 0
                else:
                    self._decrease(now)
            return
        self._calm += 1
        if ticket.window != self._window:
            return  # started under another limit: says nothing about this one
        if self._measuring is None:
            # The first request under the new limit is back: the requests that were in
            # flight at the change have cleared too. Measure from here (steady state).
            self._measuring = now
            self._opened = now
            self._area = 0.0
            return
        if ticket.started < self._measuring:
            return
        self._samples += 1
        self._latency_sum += max(0.0, now - ticket.started)
        if self._phase == "startup":
            least = _STARTUP_SAMPLES
        else:  # a few round trips' worth: 32 answers at 1 in flight could take minutes
            least = min(self._min_samples, _ROUND_TRIPS * self.limit)
        if self._samples >= max(least, self.limit) and now - self._measuring >= _MIN_WINDOW_S:
            self._close_window(now)

    # -- windows ----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now > self._stamp:
            self._area += self.in_flight * (now - self._stamp)
            self._stamp = now

    def _set(self, level: int, now: float) -> None:
        """Open a new window at ``level``."""
        self.limit = max(self.floor, min(self.ceiling, level))
        self.low = min(self.low, self.limit)
        self.high = max(self.high, self.limit)
        self._window += 1
        # Requests from before the change bias a window until they are back; with none in
        # flight there is nothing to wait for.
        self._measuring = None if self.in_flight else now
        self._opened = self._stamp = now
        self._area = 0.0
        self._samples = 0
        self._latency_sum = 0.0

    def _decrease(self, now: float) -> None:
        self.epoch += 1
        self.decreases += 1
        before = self.limit
        self.cruise = max(self.floor, int(before * _BETA))
        # Recover as from a start, but only up to just below where it overloaded: a
        # passing 429 costs a few windows, a real limit is not hit again at once.
        self._calm = 0
        self._phase = "startup"
        self._top = max(self.cruise, before - 1)
        self._next_probe = "up"
        self._cruised = 0
        self._last = None
        self._set(self.cruise, now)

    def _close_window(self, now: float) -> None:
        span = now - self._opened
        busy = self._area / span if span > 0 else float(self.in_flight + 1)
        sample = _Sample(self.limit, busy, self._latency_sum / self._samples)
        if busy < _BUSY * self.limit:
            self._set(self.limit, now)  # not enough work to fill the limit: measure again
            return
        phase = self._phase
        if phase == "startup":
            self._startup(sample, now)
        elif phase == "cruise":
            last, self._last = self._last, sample
            self._cruised += 1
            moved = last is not None and last.level == sample.level and last.rate > 0
            change = sample.rate / last.rate if moved and last is not None else 1.0
            if change < 1 / _CHANGED or change > _CHANGED:
                # Same limit, other throughput: the server changed (another client, another
                # model). Look at once, the way it moved.
                self._probe("down" if change < 1 else "up", now)
            elif self._cruised >= _CRUISE_WINDOWS:
                self._probe(self._next_probe, now)
            else:
                self._set(self.cruise, now)
        else:
            self._judge_probe(sample, now)

    def _startup(self, sample: _Sample, now: float) -> None:
        last = self._last
        verdict = "up" if last is None else _verdict(last, sample, _START_E)
        if verdict == "up":
            self._last = sample
            if self.limit >= self._top:
                self._settle(self.limit, sample, now)
            else:
                self._set(min(self._top, self.limit * 2), now)
            return
        if verdict == "same" or last is None:
            self._settle(self.limit, sample, now)
        else:
            self._settle(last.level, last, now)

    def _settle(self, level: int, sample: _Sample, now: float) -> None:
        self._phase = "cruise"
        self._top = self.ceiling
        self.cruise = level
        self._last = sample
        self._cruised = 0
        self._set(level, now)

    def _probe(self, direction: str, now: float) -> None:
        level = self.cruise
        if direction == "up":
            target = min(self.ceiling, max(level + 1, round(level * _PROBE_GAIN)))
        else:
            target = max(self.floor, min(level - 1, round(level / _PROBE_GAIN)))
        self._next_probe = "down" if direction == "up" else "up"
        self._cruised = 0
        if target == level:
            self._phase = "cruise"
            self._set(level, now)
            return
        self.probes += 1
        self._phase = direction
        self._set(target, now)

    def _judge_probe(self, sample: _Sample, now: float) -> None:
        last = self._last
        up = self._phase == "up"
        if last is None:
            self._settle(self.cruise, sample, now)
            return
        verdict = _verdict(last, sample) if up else _verdict(sample, last)
        if verdict == ("up" if up else "down"):
            self.cruise = sample.level
            self._last = sample
            self._probe("up" if up else "down", now)  # it moved: look further the same way
        else:
            self._phase = "cruise"
            self._set(self.cruise, now)

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimiter(limit={self.limit}, cruise={self.cruise}, "
            f"range={self.low}-{self.high}, in_flight={self.in_flight})"
        )

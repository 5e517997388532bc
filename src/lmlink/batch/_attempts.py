"""One batch item's attempts, pure: its deadline, and after each failure what comes next.

The batch runner sends each item through :class:`~lmlink.batch._pool.EndpointPool`, whose
``ask`` is a short I/O loop: take a slot, call the client, give the slot back, and ask an
:class:`ItemAttempts` what to do with a failure:

- :attr:`Next.KEEP`: the item's answer is the error (an error line; the run goes on);
- :attr:`Next.RAISE`: every item would share it (a fatal error, an unreachable server);
- :attr:`Next.MOVE`: send the request to another endpoint at once (the endpoint it failed
  on is in trouble; at most twice per endpoint, so an item cannot circle forever);
- :attr:`Next.RETRY`: wait :attr:`ItemAttempts.delay` seconds, then send it again.

The pool retries 429 and 503 itself (:data:`OWN_RETRY`; its clients do not), so that every
endpoint's limiter hears of each one; the wait comes from the same
:class:`~lmlink._retry.RetryState` and :class:`~lmlink.RetryPolicy` as the client's own
retries, so the two never disagree about a delay. The item's deadline (``total`` seconds from
its first attempt) is also the deadline of each client call it makes (:meth:`timeout_for`),
so the client's own retries and the pool's end at the same moment. Clock and randomness are
injected: tests step through whole histories without a server or a sleep.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from enum import Enum

from lmlink import _retry as retry_module
from lmlink._config import RetryPolicy, Timeout
from lmlink._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    LMLinkError,
    ModelLoadingError,
)
from lmlink._retry import RetryState, server_wait

__all__ = [
    "OWN_RETRY",
    "ItemAttempts",
    "Next",
    "client_policy",
    "pause_for",
    "unreachable",
]

OWN_RETRY = frozenset({429, 503})  # retried by the pool, so that every limit hears of them
_UNREACHABLE = frozenset({"refused", "dns", "tls"})


class Next(Enum):
    """What a batch item does after a failed attempt."""

    KEEP = "keep"  # the item's answer is the error
    RAISE = "raise"  # the run stops with the error
    MOVE = "move"  # send the request to another endpoint at once
    RETRY = "retry"  # wait ItemAttempts.delay seconds, then send it again


def unreachable(exc: LMLinkError) -> bool:
    """True when the server could not be reached at all (no request was read)."""
    return isinstance(exc, APIConnectionError) and exc.reason in _UNREACHABLE


def client_policy(policy: RetryPolicy) -> RetryPolicy:
    """The retry policy of a pool's clients: ``policy`` without the statuses the pool
    retries itself (:data:`OWN_RETRY`)."""
    return policy.replace(statuses=policy.statuses - OWN_RETRY)


def pause_for(exc: LMLinkError | None, policy: RetryPolicy, total: float | None) -> float | None:
    """How long an endpoint holds back new requests after ``exc``: the Retry-After it
    asked for, capped as a retry's wait is, and never longer than an item may take in all
    (None: no pause; test suites that skip every wait skip this one too)."""
    if exc is None or retry_module._instant:
        return None
    wait = server_wait(exc, policy)
    if wait is None or total is None:
        return wait
    return min(wait, total)


class ItemAttempts:
    """The attempts of one batch item over the endpoints of a pool.

    >>> run = ItemAttempts(policy, total=30.0, endpoints=2)
    >>> left = run.begin()                       # once an attempt has its slot
    >>> step = run.after(exc, moved=judge, fatal=False)
    >>> if step is Next.RETRY:
    ...     await asyncio.sleep(run.delay)
    """

    __slots__ = (
        "_bounded",
        "_clock",
        "_moves",
        "_policy",
        "_rand",
        "_retry_here",
        "_state",
        "deadline",
        "delay",
        "max_moves",
        "total",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        total: float | None,
        *,
        endpoints: int = 1,
        retry_here: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = _random.random,
    ) -> None:
        self._policy = policy
        self.total = total
        self._retry_here = retry_here  # False: the caller's own client retries 429/503
        self._clock = clock
        self._rand = rand
        self._state: RetryState | None = None
        self._moves = 0
        self.max_moves = 2 * endpoints
        self.deadline: float | None = None  # set by the first attempt
        self.delay = 0.0  # the wait before the next attempt, after Next.RETRY
        self._bounded = False  # the item's deadline is the client call's deadline

    def begin(self) -> float | None:
        """An attempt has its slot: the first one starts the item's clock. The seconds the
        attempt may take (None: no limit; 0 or less: the deadline has passed)."""
        now = self._clock()
        if self.deadline is None:
            if self.total is None:
                return None
            self.deadline = now + self.total
        return self.deadline - now

    def timeout_for(self, timeout: Timeout, left: float | None) -> Timeout | None:
        """The client's ``timeout`` for an attempt with ``left`` seconds to go: its total is
        what is left of the item's, so the client's own retries end when the item does
        (None: the client's timeout as it is)."""
        self._bounded = left is not None and (timeout.total is None or left <= timeout.total)
        if not self._bounded:
            return None  # the client's own deadline comes first
        return timeout.replace(total=left)

    def kept(self, exc: LMLinkError) -> LMLinkError:
        """The error the item keeps after :attr:`Next.KEEP`: the item's own when the call
        ran out of the item's time, else ``exc`` itself."""
        if self._bounded and isinstance(exc, APITimeoutError) and exc.phase == "total":
            return self.expired()
        return exc

    def expired(self) -> APITimeoutError:
        """The error line of an item whose time is up."""
        return APITimeoutError(
            f"the item's total timeout of {self.total:g} s passed",
            phase="total",
            timeout=self.total,
            reason="timeout",
        )

    def after(self, exc: LMLinkError, *, moved: Callable[[LMLinkError], bool], fatal: bool) -> Next:
        """What follows the failed attempt ``exc``. ``moved(exc)`` is the pool's verdict on
        the endpoint (it counts the failure against it): True if the request should go to
        another one. ``fatal``: every item would fail the same way."""
        if isinstance(exc, APITimeoutError) and exc.phase == "total":
            return Next.KEEP  # the item's own time is up (or the client's)
        if moved(exc):
            if self._moves < self.max_moves:
                self._moves += 1
                return Next.MOVE
        elif fatal or unreachable(exc):
            return Next.RAISE
        own = isinstance(exc, APIStatusError) and exc.status_code in OWN_RETRY
        if not (self._retry_here and own and not isinstance(exc, ModelLoadingError)):
            return Next.KEEP
        state = self._state
        if state is None:
            state = RetryState(self._policy, self.deadline, clock=self._clock, rand=self._rand)
            self._state = state
        try:
            self.delay = state.delay_for(exc)  # raises when the wait would pass the deadline
        except LMLinkError:
            return Next.KEEP
        return Next.RETRY

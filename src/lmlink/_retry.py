"""Retry decisions, pure: which failures are worth another try and how long to wait.

:class:`RetryState` is driven by the two client shells: after each failure they ask
:meth:`RetryState.delay_for` for the wait (it raises the failure when the answer is "no
more"), then sleep with their own ``time.sleep`` / ``asyncio.sleep``. Clock and randomness
are injected, so tests step through whole retry histories without sleeping.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping

from ._config import RetryPolicy
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    LMLinkError,
    ModelLoadingError,
    StreamError,
)

__all__ = [
    "RetryState",
    "backoff_delay",
    "parse_retry_after",
    "reached_caller",
    "server_wait",
    "set_instant_retries",
]

# Transport failures that say nothing about the request itself: the server was not there
# (yet), or dropped a connection. A DNS or TLS failure will not mend by itself.
_RETRY_REASONS = frozenset({"refused", "reset", "closed", ""})

_instant = False


def set_instant_retries(enabled: bool = True) -> None:
    """Make every retry wait zero seconds (for test suites); the decisions stay the same.

    >>> lmlink.set_instant_retries(True)
    """
    global _instant  # noqa: PLW0603 - one process-wide switch, like stamina.set_testing
    _instant = enabled


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None.

    ``retry-after-ms`` (milliseconds) wins over ``Retry-After``, which is either seconds or
    an HTTP date (RFC 9110 §10.2.3). ``now`` is the wall-clock time for dates. A date in
    the past means 0.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < float("inf"):
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        import email.utils

        try:
            stamp = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if stamp.tzinfo is None:
            return None
        seconds = stamp.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not 0 <= seconds < float("inf"):  # also false for NaN
        return None
    return seconds


def backoff_delay(retry: int, policy: RetryPolicy, rand: float) -> float:
    """The wait before retry number ``retry`` (1-based); ``rand`` is uniform in [0, 1)."""
    base = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (retry - 1))
    return base * (1.0 - policy.jitter * rand)


def server_wait(exc: LMLinkError, policy: RetryPolicy) -> float | None:
    """The wait the server asked for with ``exc`` (``Retry-After``), capped at
    ``policy.retry_after_max``; None when it asked for none. The client's retries and the
    batch runner's pauses both take it from here."""
    after = exc.retry_after if isinstance(exc, APIStatusError) else None
    return None if after is None else min(after, policy.retry_after_max)


def _is_loading(exc: LMLinkError) -> bool:
    return isinstance(exc, ModelLoadingError)


def reached_caller(exc: LMLinkError) -> bool:
    """Whether a stream handed text, reasoning or tool calls out before ``exc``: then the
    request must not be sent again, neither retried nor adapted."""
    partial = exc.partial if isinstance(exc, StreamError) else None
    return partial is not None and bool(partial.content or partial.reasoning or partial.tool_calls)


def is_retryable(exc: LMLinkError, policy: RetryPolicy) -> bool:
    """Whether ``exc`` may be retried at all (before any byte reached the caller)."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in policy.statuses or _is_loading(exc)
    if isinstance(exc, APITimeoutError):
        return exc.phase == "connect"
    if isinstance(exc, APIConnectionError):
        return exc.reason in _RETRY_REASONS
    return False


class RetryState:
    """The retry budget of one call.

    >>> state = RetryState(policy, deadline=None)
    >>> delay = state.delay_for(exc)   # raises exc when it must not be retried
    """

    __slots__ = (
        "_clock",
        "_counted",
        "_load_started",
        "_policy",
        "_rand",
        "answered",
        "deadline",
        "retries",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None,
        *,
        answered: bool = False,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = _random.random,
    ) -> None:
        self._policy = policy
        self.deadline = deadline
        # Whether this server has answered this client before: then, with a deadline, a
        # refused connection is a restart (waited for like a loading model); otherwise the
        # server is probably not running, and max_retries bounds the tries.
        self.answered = answered
        self._clock = clock
        self._rand = rand
        self.retries = 0  # every retry granted so far
        self._counted = 0  # those that count against max_retries
        self._load_started: float | None = None

    def delay_for(self, exc: LMLinkError) -> float:
        """Seconds to wait before the next attempt after ``exc``; raises ``exc`` if none."""
        policy = self._policy
        if reached_caller(exc):
            raise exc  # sending again would repeat what the caller has seen
        if not is_retryable(exc, policy):
            raise exc
        now = self._clock()
        # Waiting for a server that is loading, or (with a deadline) restarting after it
        # answered, is bounded by time, not by the retry count. One that never answered and
        # refuses is probably not running: max_retries tells the caller soon.
        waiting = _is_loading(exc) or (
            self.answered
            and self.deadline is not None
            and isinstance(exc, APIConnectionError)
            and exc.reason == "refused"
        )
        if waiting:
            if self._load_started is None:
                self._load_started = now
            if now - self._load_started >= policy.load_wait:
                raise exc
        elif self._counted >= policy.max_retries:
            raise exc
        else:
            self._counted += 1
        self.retries += 1
        delay_asked = server_wait(exc, policy)
        if delay_asked is not None:
            delay = delay_asked
        else:
            delay = backoff_delay(min(self.retries, 32), policy, self._rand())
        if waiting and self._load_started is not None:
            # One last try when load_wait runs out, not a wait past it.
            delay = min(delay, self._load_started + policy.load_wait - now)
        if self.deadline is not None and now + delay >= self.deadline:
            raise exc
        return 0.0 if _instant else delay

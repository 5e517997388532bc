"""Retry decisions and waits, stepped through with an injected clock (no sleeping)."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lmlink
from lmlink._retry import RetryState, backoff_delay, parse_retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(code: int, retry_after: float | None = None) -> lmlink.APIStatusError:
    cls = {429: lmlink.RateLimitError, 503: lmlink.OverloadedError}.get(code, lmlink.APIStatusError)
    return cls(f"HTTP {code}", status_code=code, retry_after=retry_after)


def run(state: RetryState, clock: Clock, errors: list[lmlink.LMLinkError]) -> list[float]:
    """Feed failures until the state gives up; return the waits it granted."""
    waits = []
    for exc in errors:
        try:
            delay = state.delay_for(exc)
        except lmlink.LMLinkError:
            break
        waits.append(delay)
        clock.now += delay
    return waits


@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_retryable_statuses_are_retried_max_retries_times(code: int) -> None:
    """429/502/503/504 are retried exactly max_retries times."""
    clock = Clock()
    state = RetryState(lmlink.RetryPolicy(max_retries=3), None, clock=clock, rand=lambda: 0.0)
    assert run(state, clock, [status(code)] * 10) == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("code", [400, 401, 404, 422, 500])
def test_client_errors_are_never_retried(code: int) -> None:
    """400/401/404/422 (and a plain 500) raise at once."""
    state = RetryState(lmlink.RetryPolicy(), None)
    err = status(code)
    with pytest.raises(lmlink.APIStatusError) as info:
        state.delay_for(err)
    assert info.value is err


def test_retry_after_is_honoured_and_capped() -> None:
    """The server's wait is used as given, capped at retry_after_max."""
    clock = Clock()
    state = RetryState(lmlink.RetryPolicy(retry_after_max=10), None, clock=clock, rand=lambda: 0.0)
    assert run(state, clock, [status(429, 2.5), status(429, 500.0)]) == [2.5, 10.0]


def test_total_deadline_stops_retrying_before_it_passes() -> None:
    """A wait that would cross the deadline is not taken: the error is raised instead."""
    clock = Clock()
    policy = lmlink.RetryPolicy(max_retries=100, backoff_initial=1, backoff_max=8)
    state = RetryState(policy, clock.now + 30, clock=clock, rand=lambda: 0.0)
    waits = run(state, clock, [status(503)] * 100)
    assert sum(waits) < 30
    assert waits == [1, 2, 4, 8, 8]


def test_loading_is_waited_for_beyond_max_retries_within_load_wait() -> None:
    """A model still loading does not use up max_retries; load_wait bounds it."""
    clock = Clock()
    policy = lmlink.RetryPolicy(max_retries=1, backoff_max=2, load_wait=20)
    state = RetryState(policy, None, clock=clock, rand=lambda: 0.0)
    loading = lmlink.ModelLoadingError("loading", status_code=503)
    waits = run(state, clock, [loading] * 100)
    assert len(waits) > 5
    assert sum(waits[:-1]) < 20


def test_a_long_retry_after_does_not_outlast_load_wait() -> None:
    """A loading server asking for 6 s with load_wait=1: one wait of at most the 1 s left,
    then the error; never a wait past load_wait."""
    clock = Clock()
    policy = lmlink.RetryPolicy(load_wait=1.0)
    state = RetryState(policy, None, clock=clock, rand=lambda: 0.0)
    loading = lmlink.ModelLoadingError("loading", status_code=503, retry_after=6.0)
    waits = run(state, clock, [loading] * 10)
    assert waits == [1.0]
    assert clock.now == 1001.0


def test_refused_connection_of_a_server_that_answered_waits_until_the_deadline() -> None:
    """A server that answered before and now refuses (restarting) is retried until the
    deadline, not max_retries times."""
    clock = Clock()
    state = RetryState(
        lmlink.RetryPolicy(max_retries=1, backoff_max=1),
        clock.now + 10,
        answered=True,
        clock=clock,
        rand=lambda: 0.0,
    )
    refused = lmlink.APIConnectionError("refused", reason="refused")
    waits = run(state, clock, [refused] * 100)
    assert len(waits) > 3
    assert sum(waits) < 10


@pytest.mark.parametrize(
    ("deadline", "answered"),
    [(None, False), (300.0, False), (None, True)],
    ids=["never-answered", "never-answered-deadline", "answered-no-deadline"],
)
def test_refused_connection_counts_retries_unless_a_known_server_has_a_deadline(
    deadline: float | None, answered: bool
) -> None:
    """A server that never answered and refuses is probably not running: max_retries
    bounds the tries, deadline or not (and without a deadline for any server)."""
    clock = Clock()
    state = RetryState(
        lmlink.RetryPolicy(max_retries=2),
        None if deadline is None else clock.now + deadline,
        answered=answered,
        clock=clock,
        rand=lambda: 0.0,
    )
    refused = lmlink.APIConnectionError("refused", reason="refused")
    assert len(run(state, clock, [refused] * 10)) == 2


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (lmlink.APITimeoutError("t", phase="connect"), True),
        (lmlink.APITimeoutError("t", phase="idle"), False),
        (lmlink.APITimeoutError("t", phase="total"), False),
        (lmlink.APIConnectionError("c", reason="dns"), False),
        (lmlink.APIConnectionError("c", reason="reset"), True),
        (lmlink.StreamError("s", partial=lmlink.ChatResponse(content="half")), False),
        (lmlink.DecodeError("d"), False),
    ],
    ids=["connect-timeout", "idle-timeout", "total", "dns", "reset", "stream-with-text", "decode"],
)
def test_which_failures_are_retried(exc: lmlink.LMLinkError, retried: bool) -> None:
    """Connect failures retry; idle timeouts, DNS errors and delivered text do not."""
    state = RetryState(lmlink.RetryPolicy(), None)
    if retried:
        assert state.delay_for(exc) >= 0
    else:
        with pytest.raises(type(exc)):
            state.delay_for(exc)


def test_instant_switch_zeroes_waits_but_keeps_decisions() -> None:
    """set_instant_retries makes waits 0 while the retry count stays the same."""
    lmlink.set_instant_retries(True)
    try:
        clock = Clock()
        state = RetryState(lmlink.RetryPolicy(max_retries=2), None, clock=clock)
        assert run(state, clock, [status(503)] * 5) == [0.0, 0.0]
    finally:
        lmlink.set_instant_retries(False)


@given(st.integers(1, 50), st.floats(0, 0.999))
def test_backoff_is_capped_and_jittered(n: int, rand: float) -> None:
    """Every wait lies in [base*(1-jitter), base] and never exceeds backoff_max."""
    policy = lmlink.RetryPolicy(backoff_initial=0.5, backoff_max=8, jitter=0.5)
    base = min(8.0, 0.5 * 2 ** (n - 1))
    delay = backoff_delay(n, policy, rand)
    assert base * 0.5 <= delay <= base <= 8.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({}, None),
    ],
    ids=["seconds", "fraction", "ms", "junk", "negative", "none"],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, milliseconds and junk are read as RFC 9110 and openai-python do."""
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date is turned into seconds from now."""
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": date}, now=2_000_000.0) == 0.0

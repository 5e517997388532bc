"""The AIMD concurrency limiter, pure: no I/O, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmlink.batch import AIMDLimiter, Outcome


def test_starts_at_the_ceiling_and_refuses_beyond_it() -> None:
    """A new limiter admits `ceiling` requests, then says no until one finishes."""
    lim = AIMDLimiter(3)
    tickets = [lim.try_start() for _ in range(3)]
    assert tickets == [0, 0, 0]
    assert lim.try_start() is None
    lim.finish(0, Outcome.NEUTRAL)
    assert lim.try_start() == 0


def test_overload_halves_the_limit_down_to_the_floor() -> None:
    """Each overload from a fresh epoch halves the limit; it never goes below 1."""
    lim = AIMDLimiter(8)
    seen = []
    for _ in range(5):
        ticket = lim.try_start()
        assert ticket is not None
        lim.finish(ticket, Outcome.OVERLOAD)
        seen.append(lim.limit)
    assert seen == [4, 2, 1, 1, 1]


def test_a_burst_of_overloads_counts_once() -> None:
    """Eight 429s from requests sent before the first came back halve the limit once."""
    lim = AIMDLimiter(8)
    tickets = [lim.try_start() for _ in range(8)]
    for ticket in tickets:
        assert ticket is not None
        lim.finish(ticket, Outcome.OVERLOAD)
    assert lim.limit == 4
    assert lim.decreases == 1


def test_additive_increase_after_a_window_of_successes() -> None:
    """After `limit` successes in a row the limit grows by one, up to the ceiling."""
    lim = AIMDLimiter(4)
    ticket = lim.try_start()
    assert ticket is not None
    lim.finish(ticket, Outcome.OVERLOAD)
    assert lim.limit == 2
    history = []
    for _ in range(12):
        ticket = lim.try_start()
        assert ticket is not None
        lim.finish(ticket, Outcome.OK)
        history.append(lim.limit)
    assert history == [2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4]


def test_an_overload_resets_the_success_streak() -> None:
    """Successes before an overload do not count towards the next increase."""
    lim = AIMDLimiter(4, floor=2)
    for outcome in (Outcome.OK, Outcome.OK, Outcome.OVERLOAD, Outcome.OK):
        ticket = lim.try_start()
        assert ticket is not None
        lim.finish(ticket, outcome)
    assert lim.limit == 2


def test_neutral_outcomes_change_nothing() -> None:
    """A 400 or a bad answer says nothing about load."""
    lim = AIMDLimiter(5)
    for _ in range(10):
        ticket = lim.try_start()
        assert ticket is not None
        lim.finish(ticket, Outcome.NEUTRAL)
    assert (lim.limit, lim.decreases, lim.in_flight) == (5, 0, 0)


def test_a_lower_limit_holds_back_new_requests_until_enough_finish() -> None:
    """After a decrease below the requests in flight, none starts until in-flight < limit."""
    lim = AIMDLimiter(4)
    tickets = [lim.try_start() for _ in range(4)]
    lim.finish(tickets[0] or 0, Outcome.OVERLOAD)  # limit 2, 3 still in flight
    assert lim.try_start() is None
    lim.finish(0, Outcome.NEUTRAL)
    assert lim.try_start() is None
    lim.finish(0, Outcome.NEUTRAL)
    assert lim.try_start() == 1


@pytest.mark.parametrize(
    ("ceiling", "floor"), [(0, 1), (4, 0), (2, 3)], ids=["zero", "floor0", "floor>ceiling"]
)
def test_bad_bounds_are_refused(ceiling: int, floor: int) -> None:
    """The bounds must satisfy 1 <= floor <= ceiling."""
    with pytest.raises(ValueError, match="floor"):
        AIMDLimiter(ceiling, floor=floor)


def test_finish_without_start_is_an_error() -> None:
    """Finishing more requests than were started is a bug, reported at once."""
    with pytest.raises(RuntimeError):
        AIMDLimiter(2).finish(0, Outcome.OK)


@given(
    ceiling=st.integers(1, 64),
    ops=st.lists(st.sampled_from(["start", "ok", "overload", "neutral"]), max_size=300),
)
def test_limit_always_within_bounds(ceiling: int, ops: list[str]) -> None:
    """Whatever happens, 1 <= limit <= ceiling and in-flight never exceeds a granted slot."""
    lim = AIMDLimiter(ceiling)
    running: list[int] = []
    for op in ops:
        if op == "start":
            before = lim.limit
            ticket = lim.try_start()
            if ticket is not None:
                assert lim.in_flight <= before
                running.append(ticket)
        elif running:
            lim.finish(running.pop(0), Outcome(op))
        assert 1 <= lim.limit <= ceiling
        assert lim.in_flight == len(running)

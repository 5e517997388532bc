"""The adaptive concurrency limiter, pure, on simulated servers (injected time, no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmlink.batch import AdaptiveLimiter, Outcome
from lmlink.testing import SHAPES, ServerShape, ShapeModel, SimResult, simulate


class Fixed:
    """A hand-picked concurrency: what a user who knows the server would set."""

    def __init__(self, n: int) -> None:
        self.limit = n
        self.in_flight = 0

    def try_start(self, now: float) -> int | None:
        if self.in_flight >= self.limit:
            return None
        self.in_flight += 1
        return 0

    def finish(self, ticket: object, outcome: object, now: float) -> None:
        self.in_flight -= 1


def _run(
    shape: ServerShape | ShapeModel,
    limiter: Any,
    seconds: float,
    on_step: Callable[[ShapeModel], None] | None = None,
) -> SimResult:
    return simulate(
        shape, limiter, seconds=seconds, ok=Outcome.OK, overload=Outcome.OVERLOAD, on_step=on_step
    )


LEVELS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


@pytest.mark.parametrize("name", list(SHAPES), ids=list(SHAPES))
def test_default_reaches_the_knee_of_each_shape(name: str) -> None:
    """On each shape, the adaptive default gets >= 90 % of the best hand-picked throughput
    with p50 latency <= 2.5x that of the smallest hand-picked limit reaching 90 %."""
    shape = SHAPES[name]
    fixed = {n: _run(shape, Fixed(n), 20) for n in LEVELS}
    best = max(r.rate for r in fixed.values())
    smallest = min(n for n in LEVELS if fixed[n].rate >= 0.9 * best)
    auto = _run(shape, AdaptiveLimiter(), 60)
    assert auto.rate >= 0.9 * best
    assert auto.latency_p(50) <= 2.5 * fixed[smallest].latency_p(50)
    assert auto.rejected == 0 or name == "queue"


def test_ramps_up_fast_from_a_low_start() -> None:
    """From 1 in flight it doubles per window: a 256-wide server is reached in seconds."""
    lim = AdaptiveLimiter()
    assert lim.limit == 1
    result = _run(SHAPES["batching"], lim, 8)
    assert max(result.limits) >= 256
    assert lim.high >= 256
    assert lim.low == 1


def test_settles_where_more_only_adds_latency() -> None:
    """On 4 flat slots it stays near 4: 8 or more would only double the latency."""
    lim = AdaptiveLimiter()
    result = _run(SHAPES["slots"], lim, 60)
    settled = result.limits[len(result.limits) // 2 :]
    assert 4 <= lim.cruise <= 6
    assert sum(settled) / len(settled) <= 6


def test_the_ceiling_is_an_upper_bound() -> None:
    """With a ceiling below the knee it never goes beyond it."""
    lim = AdaptiveLimiter(ceiling=40)
    result = _run(SHAPES["batching"], lim, 20)
    assert max(result.limits) <= 40
    assert lim.cruise == 40


@pytest.mark.parametrize(
    ("before", "after", "low", "high"),
    [("batching", "slots", 2, 10), ("slots", "batching", 150, 600)],
    ids=["shrinks", "grows"],
)
def test_follows_a_server_that_changes(before: str, after: str, low: int, high: int) -> None:
    """The server changes under a run (a model reload, another client): the limit follows."""
    lim = AdaptiveLimiter()
    model = ShapeModel(SHAPES[before])

    def change(m: ShapeModel) -> None:
        if m.now > 30:
            m.shape = SHAPES[after]

    _run(model, lim, 90, on_step=change)
    assert low <= lim.cruise <= high


def test_overload_halves_once_per_burst_and_backs_off_on_a_full_queue() -> None:
    """A queue that refuses past 1 waiting: 503s halve the limit, a burst counts once,
    and the run still ends with every request done at the server's capacity."""
    shape = ServerShape("tiny queue", slots=2, step_s=0.005, queue_limit=1)
    lim = AdaptiveLimiter()
    result = _run(shape, lim, 30)
    assert result.rejected > 0
    assert lim.decreases >= 1
    assert lim.decreases <= result.rejected
    assert result.rate >= 0.85 * shape.capacity
    assert lim.cruise <= 4


def test_a_burst_of_overloads_counts_once() -> None:
    """Eight 429s from requests sent before the first came back halve the limit once."""
    lim = AdaptiveLimiter(initial=8)
    tickets = [lim.try_start(0.0) for _ in range(8)]
    for t in tickets:
        assert t is not None
        lim.finish(t, Outcome.OVERLOAD, 0.1)
    assert (lim.limit, lim.decreases) == (4, 1)


def test_retry_after_holds_every_new_request_back() -> None:
    """A Retry-After pauses all starts until it has passed, capped at a minute."""
    lim = AdaptiveLimiter(initial=4)
    t = lim.try_start(0.0)
    assert t is not None
    lim.finish(t, Outcome.OVERLOAD, 1.0, retry_after=2.5)
    assert lim.try_start(2.0) is None
    assert lim.wait_s(2.0) == pytest.approx(1.5)
    assert lim.try_start(3.5) is not None
    t2 = lim.try_start(3.5)
    assert t2 is not None
    lim.finish(t2, Outcome.OVERLOAD, 4.0, retry_after=3600)
    assert lim.wait_s(4.0) == pytest.approx(60.0)


def test_neutral_and_stale_outcomes_change_nothing() -> None:
    """A 400 says nothing about load; a request from before a change is not a sample."""
    lim = AdaptiveLimiter(initial=2)
    for i in range(50):
        t = lim.try_start(float(i))
        assert t is not None
        lim.finish(t, Outcome.NEUTRAL, i + 0.5)
    assert lim.decreases == 0
    assert lim.in_flight == 0


@pytest.mark.parametrize(
    ("ceiling", "floor"), [(0, 1), (4, 0), (2, 3)], ids=["zero", "floor0", "floor>ceiling"]
)
def test_bad_bounds_are_refused(ceiling: int, floor: int) -> None:
    """The bounds must satisfy 1 <= floor <= ceiling."""
    with pytest.raises(ValueError, match="floor"):
        AdaptiveLimiter(ceiling, floor=floor)


def test_finish_without_start_is_an_error() -> None:
    """Finishing more requests than were started is a bug, reported at once."""
    lim = AdaptiveLimiter()
    t = lim.try_start(0.0)
    assert t is not None
    lim.finish(t, Outcome.OK, 1.0)
    with pytest.raises(RuntimeError):
        lim.finish(t, Outcome.OK, 2.0)


@given(
    ceiling=st.integers(1, 64),
    ops=st.lists(
        st.tuples(st.sampled_from(["start", "ok", "overload", "neutral"]), st.floats(0, 2)),
        max_size=300,
    ),
)
def test_limit_always_within_bounds(ceiling: int, ops: list[tuple[str, float]]) -> None:
    """Whatever happens, floor <= limit <= ceiling and in-flight is what was started."""
    lim = AdaptiveLimiter(ceiling, min_samples=1)
    running = []
    now = 0.0
    for op, dt in ops:
        now += dt
        if op == "start":
            ticket = lim.try_start(now)
            if ticket is not None:
                running.append(ticket)
        elif running:
            lim.finish(running.pop(0), Outcome(op), now)
        assert 1 <= lim.limit <= ceiling
        assert lim.low <= lim.cruise <= lim.high
        assert lim.in_flight == len(running)


def test_the_model_matches_its_formula() -> None:
    """The discrete model's steady state is the shape's closed form (rate, latency)."""
    shape = ServerShape("flat", slots=4, step_s=0.005, spread=0.0)
    result = _run(shape, Fixed(8), 10)
    assert result.rate == pytest.approx(shape.rate(8), rel=0.02)
    assert result.latency_p(50) == pytest.approx(shape.latency(8), rel=0.02)
    assert shape.capacity == pytest.approx(50.0)


def test_the_shape_server_answers_on_its_schedule_and_refuses_past_its_queue() -> None:
    """Over HTTP: one slot and no queue, three requests at once: one is answered after its
    steps, the others get 503 at once."""
    import threading

    import lmlink
    from lmlink.testing import ShapeServer

    shape = ServerShape("one slot", slots=1, step_s=0.05, steps=10, queue_limit=0, spread=0.0)
    with ShapeServer(shape) as srv:
        results: list[str] = []

        def ask() -> None:
            with lmlink.Client(endpoint=srv.url, model="fake-model", max_retries=0) as client:
                try:
                    results.append(client.chat("hi").content)
                except lmlink.OverloadedError:
                    results.append("503")

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["503", "503", "ok " * 10]
        assert (srv.served, srv.rejected) == (1, 2)


def test_where_answers_are_fast_it_grows_while_throughput_grows_at_all() -> None:
    """Sub-millisecond answers (a cache, a tiny model): latency is not worth saving, so the
    limit climbs until more in flight stops adding throughput, not at the first flattening."""
    fast = ServerShape("fast", slots=4096, step_s=0.0002, per_seq_s=0.00005, steps=1, spread=0.0)
    lim = AdaptiveLimiter()
    result = _run(fast, lim, 10)
    assert lim.cruise >= 64
    assert result.rate >= 0.9 * fast.capacity


@pytest.mark.parametrize("value", [None, "auto", 3], ids=["none", "auto", "int"])
def test_run_batch_takes_auto_or_a_ceiling(tmp_path: Path, value: object) -> None:
    """``concurrency`` is None or "auto" (adaptive, ceiling 1,024) or an int (the ceiling,
    where it starts); the summary says the range the limit took."""
    from lmlink.batch import run_batch
    from lmlink.testing import FakeServer

    rows = [{"id": f"r{i}", "prompt": "hi"} for i in range(40)]
    with FakeServer() as server:
        summary = run_batch(
            rows,
            tmp_path / "out.jsonl",
            endpoint=server.url,
            model="fake-model",
            concurrency=value,  # type: ignore[arg-type]
        )
    assert summary.ok == 40
    assert summary.concurrency == (3 if value == 3 else 1024)
    assert summary.concurrency_range is not None
    low, high = summary.concurrency_range
    assert 1 <= low <= high <= summary.concurrency
    assert summary.concurrency_settled is not None


@pytest.mark.parametrize("value", ["lots", 0, 2.5, True], ids=["str", "zero", "float", "bool"])
def test_a_bad_concurrency_is_refused_before_anything_is_read(
    tmp_path: Path, value: object
) -> None:
    """A concurrency that is not "auto" or a positive int is a ConfigurationError, raised
    before the input is read (the input path does not even exist)."""
    import lmlink
    from lmlink.batch import run_batch

    with pytest.raises(lmlink.ConfigurationError, match="concurrency"):
        run_batch(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", concurrency=value)  # type: ignore[arg-type]


def _random_refusals(limiter: AdaptiveLimiter, seconds: float, p: float) -> float:
    """A server with room for anything (150-200 ms an answer) that refuses a fraction ``p``
    of requests at random, whatever the load (429, Retry-After 0.2 s): the limit's mean over
    time."""
    import heapq
    import random

    rng = random.Random(7)
    now, area, seq = 0.0, 0.0, 0
    flights: list[tuple[float, int, Any]] = []
    while now < seconds:
        while (ticket := limiter.try_start(now)) is not None:
            heapq.heappush(flights, (now + 0.15 + rng.random() * 0.05, seq, ticket))
            seq += 1
        if not flights:
            area += limiter.limit * (limiter.paused_until - now)
            now = limiter.paused_until
            continue
        end, _, ticket = heapq.heappop(flights)
        area += limiter.limit * (end - now)
        now = end
        if rng.random() < p:
            limiter.finish(ticket, Outcome.OVERLOAD, now, retry_after=0.2)
        else:
            limiter.finish(ticket, Outcome.OK, now)
    return area / now


def test_random_refusals_do_not_ratchet_the_limit_to_the_floor() -> None:
    """A 2 % rate of refusals unrelated to load (a proxy's rate limiter, the demo's test
    server) is honoured (Retry-After) but does not pin the limit at 1: each halving came to
    stay before, since recovery stopped one below the level it left."""
    mean = _random_refusals(AdaptiveLimiter(8, initial=8, now=0.0), 60.0, 0.02)
    assert mean >= 4.0, mean


def test_refusals_at_every_level_still_bring_the_limit_down() -> None:
    """Refusals that come with load (a third of all requests) still halve the limit."""
    limiter = AdaptiveLimiter(64, initial=64, now=0.0)
    _random_refusals(limiter, 20.0, 0.33)
    assert limiter.decreases >= 3
    assert limiter.limit <= 8

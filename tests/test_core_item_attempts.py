"""A batch item's attempts (lmlink.batch._attempts.ItemAttempts), pure with an injected
clock: the deadline, the pool's own 429/503 retries, moving to another endpoint, what is
raised and what the item keeps; then, through real HTTP, that the pool and its client end
an item the same way when a wait would pass the item's deadline."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import lmlink
from batch_helpers import prompts, read_jsonl
from lmlink import RetryPolicy, Timeout
from lmlink._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    LMLinkError,
    ModelLoadingError,
    OverloadedError,
    RateLimitError,
)
from lmlink.batch import run_batch
from lmlink.batch._attempts import ItemAttempts, Next, client_policy, pause_for
from lmlink.testing import FakeServer, Reply


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POLICY = RetryPolicy(max_retries=2, backoff_initial=1.0, jitter=0.0, retry_after_max=10.0)


def _run(total: float | None = 30.0, clock: Clock | None = None, **kw: object) -> ItemAttempts:
    return ItemAttempts(POLICY, total, clock=clock or Clock(), rand=lambda: 0.0, **kw)  # type: ignore[arg-type]


def _busy(retry_after: float | None = None) -> OverloadedError:
    return OverloadedError("busy", status_code=503, retry_after=retry_after)


def _stay(exc: LMLinkError) -> bool:
    return False


def test_deadline_starts_with_the_first_attempt() -> None:
    """The first attempt fixes the deadline; later attempts get what is left of it."""
    clock = Clock()
    run = _run(10.0, clock)
    assert run.deadline is None
    assert run.begin() == 10.0
    clock.now += 4
    assert run.begin() == 6.0
    assert run.deadline == 110.0


def test_no_total_means_no_deadline() -> None:
    """Without a total timeout the item has no deadline and the client's timeout stays."""
    run = _run(None)
    assert run.begin() is None
    assert run.timeout_for(Timeout(idle=5), None) is None


def test_client_call_gets_what_is_left_of_the_item() -> None:
    """The client's total becomes the item's time left; a shorter one of its own stays."""
    run = _run(10.0)
    assert run.timeout_for(Timeout(connect=2, idle=5, total=10), 3.5) == Timeout(2, 5, 3.5)
    assert run.timeout_for(Timeout(idle=5, total=None), 3.5) == Timeout(idle=5, total=3.5)
    assert run.timeout_for(Timeout(idle=5, total=2.0), 3.5) is None


def test_pool_retries_429_and_503_with_the_clients_backoff() -> None:
    """429/503: wait the policy's backoff (or the capped Retry-After), then again."""
    run = _run()
    run.begin()
    assert run.after(_busy(), moved=_stay, fatal=False) is Next.RETRY
    assert run.delay == 1.0
    limited = RateLimitError("slow", status_code=429, retry_after=50.0)
    assert run.after(limited, moved=_stay, fatal=False) is Next.RETRY
    assert run.delay == 10.0  # capped at retry_after_max, as the client caps it
    assert run.after(_busy(), moved=_stay, fatal=False) is Next.KEEP  # max_retries spent


def test_wait_past_the_deadline_keeps_the_error() -> None:
    """A Retry-After that would end past the item's deadline is not waited for."""
    clock = Clock()
    run = _run(2.0, clock)
    run.begin()
    assert run.after(_busy(retry_after=1.2), moved=_stay, fatal=False) is Next.RETRY
    clock.now += 1.2
    assert run.after(_busy(retry_after=1.0), moved=_stay, fatal=False) is Next.KEEP


@pytest.mark.parametrize(
    "exc",
    [
        APIStatusError("bad gateway", status_code=502),
        BadRequestError("bad", status_code=400),
        ModelLoadingError("loading", status_code=503),
    ],
    ids=["502-client-retries-it", "400", "loading-client-waits"],
)
def test_other_failures_are_kept(exc: LMLinkError) -> None:
    """Statuses the client retries itself (or never retried) end the item with the error."""
    run = _run()
    run.begin()
    assert run.after(exc, moved=_stay, fatal=False) is Next.KEEP


def test_own_retry_off_when_the_caller_gave_the_client() -> None:
    """With the caller's own client (retry_here=False) the pool retries nothing itself."""
    run = _run(retry_here=False)
    run.begin()
    assert run.after(_busy(), moved=_stay, fatal=False) is Next.KEEP


def test_fatal_and_unreachable_raise() -> None:
    """A fatal error, or a server not there at all, stops the run."""
    run = _run()
    refused = APIConnectionError("refused", reason="refused")
    assert run.after(refused, moved=_stay, fatal=False) is Next.RAISE
    assert run.after(BadRequestError("x", status_code=401), moved=_stay, fatal=True) is Next.RAISE


def test_moves_to_another_endpoint_at_most_twice_per_endpoint() -> None:
    """An endpoint in trouble sends the item elsewhere, a bounded number of times."""
    run = _run(endpoints=2)
    seen: list[LMLinkError] = []

    def moved(exc: LMLinkError) -> bool:
        seen.append(exc)
        return True

    reset = APIConnectionError("reset", reason="reset")
    assert [run.after(reset, moved=moved, fatal=False) for _ in range(5)] == [
        Next.MOVE,
        Next.MOVE,
        Next.MOVE,
        Next.MOVE,
        Next.KEEP,
    ]
    assert seen == [reset] * 5  # every failure is counted against its endpoint


def test_item_deadline_is_neither_counted_nor_moved() -> None:
    """The item's own time running out says nothing about the endpoint."""
    run = _run(2.0)
    left = run.begin()
    run.timeout_for(Timeout(total=2.0), left)
    late = APITimeoutError("deadline", phase="total", timeout=2.0, reason="timeout")
    judged: list[LMLinkError] = []

    def moved(exc: LMLinkError) -> bool:
        judged.append(exc)
        return True

    step = run.after(late, moved=moved, fatal=False)
    assert (step, judged) == (Next.KEEP, [])
    kept = run.kept(late)
    assert isinstance(kept, APITimeoutError)
    assert str(kept) == "the item's total timeout of 2 s passed"


def test_clients_own_deadline_is_kept_as_it_is() -> None:
    """A client whose own total is shorter than the item's: its timeout is its own."""
    run = _run(30.0)
    run.timeout_for(Timeout(total=5.0), run.begin())
    late = APITimeoutError("the call's deadline passed", phase="total", reason="timeout")
    assert run.kept(late) is late


def test_pause_and_client_policy() -> None:
    """The endpoint's pause is the capped Retry-After, never past an item's total; the
    clients of a pool leave 429/503 to it."""
    assert pause_for(_busy(retry_after=50.0), POLICY, None) == 10.0
    assert pause_for(_busy(retry_after=50.0), POLICY, 4.0) == 4.0
    assert pause_for(_busy(), POLICY, 4.0) is None
    assert pause_for(None, POLICY, 4.0) is None
    assert client_policy(POLICY).statuses == POLICY.statuses - {429, 503}


# -- through real HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 502], ids=["pool-retries", "client-retries"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_pool_and_client_agree_at_the_deadline(tmp_path: Path, status: int, stream: bool) -> None:
    """After a 1.2 s Retry-After, an answer asking for 1.5 s more (past the item's 2 s)
    ends the item at once with that answer's error, whether the pool retries it (503) or
    the client does (502): both wait by the item's one deadline."""
    out = tmp_path / "out.jsonl"
    with FakeServer() as server:
        server.enqueue(
            Reply.error(503, "busy", retry_after=1.2),
            Reply.error(status, "still busy", retry_after=1.5),
            Reply(content="too late"),
        )
        done: list[object] = []
        thread = threading.Thread(
            target=lambda: done.append(
                run_batch(
                    prompts(1),
                    out,
                    endpoint=server.url,
                    model="fake-model",
                    timeout=lmlink.Timeout(total=2),
                    stream=stream,
                )
            ),
            daemon=True,
        )
        thread.start()
        thread.join(60)
        assert done, "the run outlived its deadline by far"
        assert server.stats.chat_requests == 2
    [line] = read_jsonl(out)
    assert line["error"]["status_code"] == status
    assert "still busy" in line["error"]["message"]

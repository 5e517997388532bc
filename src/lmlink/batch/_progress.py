"""What a batch run reports: :class:`Progress` snapshots while it runs, a :class:`BatchSummary`
at the end. Plain values; the library only hands them to a callback, the command line turns
them into a progress bar or lines on stderr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

__all__ = ["BatchSummary", "EndpointShare", "Progress", "ProgressCallback", "percentile"]


@dataclass(frozen=True, slots=True)
class EndpointShare:
    """One server's part of a run over several: ``share`` of the answers (0-1), its rate,
    ``state`` ``"up"`` or ``"down"`` (taken out after it stopped answering), its current
    adaptive ``limit`` and requests ``in_flight``."""

    url: str
    state: str
    ok: int
    failed: int
    share: float
    items_s: float
    limit: int
    in_flight: int

    def describe(self) -> str:
        """``http://a:8000/v1 up: 61% (612 ok, 40.1 items/s, limit 24)``."""
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.url} {self.state}: {self.share:.0%} ({self.ok} ok{failed}, "
            f"{self.items_s:.1f} items/s, limit {self.limit})"
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a running batch, handed to ``on_progress``.

    ``total`` is what this run has to do (the input minus the ids already in the output),
    ``done`` how much of it is finished (``ok + failed``, each counted once its line is on
    disk); ``concurrency`` is the adaptive limit right now and ``in_flight`` the requests
    open, ``ceiling`` the most the limit may reach; ``final`` is True for the last snapshot.
    ``endpoints`` has each server's part when the run uses several. ``waiting_s`` is how
    long every server still holds new requests back because it answered 429 or 503 with a
    Retry-After (0 when none does): why a run can look stuck.

    >>> def show(p: lmlink.batch.Progress) -> None:
    ...     print(f"{p.done}/{p.total} {p.tokens_per_s:.0f} tok/s")
    >>> lmlink.run_batch("in.jsonl", "out.jsonl", on_progress=show)
    """

    total: int
    done: int
    ok: int
    failed: int
    cached: int
    in_flight: int
    concurrency: int
    output_tokens: int
    elapsed_s: float
    final: bool = False
    ceiling: int = 0
    endpoints: tuple[EndpointShare, ...] = ()
    waiting_s: float = 0.0
    #: False for a run whose answers are not generated text (embeddings): no tokens/s.
    generates: bool = True

    @property
    def rate(self) -> float:
        """Items finished per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens generated per second so far (cached answers not counted)."""
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None before the first result."""
        if self.done == 0 or self.elapsed_s <= 0:
            return None
        return (self.total - self.done) / self.rate


#: ``on_progress``: called with a :class:`Progress` after each result and about twice a second.
ProgressCallback: TypeAlias = Callable[[Progress], None]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated; None if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(slots=True)
class BatchSummary:
    """The outcome of a batch run.

    ``total`` input items; ``skipped`` were already in the output; ``ok`` and ``failed``
    finished in this run (``cached`` of the ok ones came from the cache); ``errors`` counts
    the failures by error type, ``error_examples`` has one id and message per type.
    Latency and TTFT percentiles are over the answers of this run (cached ones excluded).
    ``complete`` is True when every input id has a line, ``succeeded`` when every one has an
    answer; ``earlier_errors`` are the skipped ids whose line is an error (from an earlier
    run). ``cache_error`` says why the cache was turned off during the run (a full disk,
    say), if it was. ``server_waits`` counts the times a server asked the run to wait
    (429 or 503 with a Retry-After), ``server_wait_max_s`` the longest such wait (capped,
    see :class:`~lmlink.RetryPolicy`). ``concurrency`` is the most requests in flight allowed,
    ``concurrency_range`` the lowest and highest the adaptive limit took,
    ``concurrency_settled`` where it settled (None when nothing was sent); with several
    servers these add up the servers' limits, and ``endpoints`` holds each server's
    :class:`EndpointShare` (share, rate, state). Percentiles come
    from a histogram and are within 1 % (see ``lmlink.batch._stats``); counts and tokens are
    exact.

    >>> summary = lmlink.run_batch("in.jsonl", "out.jsonl", model="qwen3:8b")
    >>> summary.ok, summary.failed, summary.errors, summary.latency_p95
    (998, 2, {'APITimeoutError': 2}, 3.1)
    """

    output: Path
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    retried: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    latency_p50: float | None = None
    latency_p95: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0
    model: str | None = None
    endpoint: str | None = None
    concurrency: int = 0
    interrupted: bool = False
    stopped_by: str | None = None
    repaired_bytes: int = 0
    cache_error: str | None = None
    concurrency_range: tuple[int, int] | None = None
    concurrency_settled: int | None = None
    earlier_errors: int = 0
    endpoints: tuple[EndpointShare, ...] = ()
    server_waits: int = 0
    server_wait_max_s: float = 0.0

    @property
    def remaining(self) -> int:
        """Input items that still have no line in the output."""
        return self.total - self.skipped - self.ok - self.failed

    @property
    def complete(self) -> bool:
        """True when every input id has a result line."""
        return self.remaining == 0

    @property
    def succeeded(self) -> bool:
        """True when every input id has an answer line (none only an error)."""
        return self.complete and self.failed == 0 and self.earlier_errors == 0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens generated per second of the run."""
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        """A few lines for people: counts, errors by type, latency, throughput, the output.

        >>> print(summary.describe())
        """
        counts = [f"{self.ok} ok", f"{self.failed} failed"]
        if self.cached:
            counts.append(f"{self.cached} from the cache")
        if self.skipped:
            earlier = f" ({self.earlier_errors} as errors)" if self.earlier_errors else ""
            counts.append(f"{self.skipped} already done{earlier}")
        if self.remaining:
            counts.append(f"{self.remaining} not done")
        noun = "item" if self.total == 1 else "items"
        lines = [f"{self.total} {noun}: " + ", ".join(counts)]
        if self.errors:
            by_type = sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append("errors: " + ", ".join(f"{name} {n}" for name, n in by_type))
            for name, _ in by_type[:5]:
                example = self.error_examples.get(name)
                if example:
                    lines.append(f"  {name}, e.g. {example}")
        if self.latency_p50 is not None:
            timing = f"latency p50 {_secs(self.latency_p50)} p95 {_secs(self.latency_p95)}"
            if self.ttft_p50 is not None:
                timing += f" · TTFT p50 {_secs(self.ttft_p50)} p95 {_secs(self.ttft_p95)}"
            lines.append(timing)
        if self.concurrency_range is not None:
            low, high = self.concurrency_range
            lines.append(
                f"concurrency {low}-{high}, settled at {self.concurrency_settled}"
                f" (at most {self.concurrency:,})"
            )
        if self.server_waits:
            times = "once" if self.server_waits == 1 else f"{self.server_waits:,} times"
            lines.append(
                f"the server asked to wait {times} (429/503 with Retry-After, up to "
                f"{_secs(self.server_wait_max_s)} each): new requests were held back meanwhile"
            )
        if len(self.endpoints) > 1:
            lines.append(f"{len(self.endpoints)} endpoints:")
            lines += [f"  {e.describe()}" for e in self.endpoints]
        if self.ok and self.ok == self.cached:
            lines.append(f"every answer from the cache, in {self.elapsed_s:.1f} s")
        elif self.ok and not self.output_tokens and self.prompt_tokens:  # embeddings
            rate = self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0
            lines.append(
                f"{self.prompt_tokens:,} input tokens in {self.elapsed_s:.1f} s: "
                f"{rate:,.1f} items/s" + (f" · model {self.model}" if self.model else "")
            )
        elif self.ok:
            lines.append(
                f"{self.output_tokens:,} output tokens in {self.elapsed_s:.1f} s: "
                f"{self.tokens_per_s:,.0f} tok/s" + (f" · model {self.model}" if self.model else "")
            )
        if self.cache_error:
            lines.append(f"warning: {self.cache_error}")
        lines.append(f"output: {self.output}")
        return "\n".join(lines)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

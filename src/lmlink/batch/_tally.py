"""What a batch run has finished, counted once it is on disk: bounded, exact where it counts.

Each result is staged as its output line and a *mark* (a small tuple: what the summary will
count for it); :meth:`Tally.count` takes the marks whose lines an fsync has just covered
(:mod:`lmlink.batch._commit`) and adds them to the :class:`BatchSummary`. Counts, tokens
and errors by type are exact; latencies and times to first token go into histograms
(:mod:`lmlink.batch._stats`), so a run of any length keeps the same few kilobytes.
"""

from __future__ import annotations

from typing import Any

from lmlink._errors import LMLinkError, clip
from lmlink._models import ChatResponse

from ._progress import BatchSummary
from ._stats import Histogram

__all__ = ["Mark", "Tally"]

Mark = tuple[Any, ...]


class Tally:
    """The summary's counters, fed with marks.

    >>> tally = Tally(summary)
    >>> tally.count([Tally.answered(resp), Tally.hit(), Tally.failed("t3", exc, message)])
    """

    def __init__(self, summary: BatchSummary) -> None:
        self.summary = summary
        self.latencies = Histogram()
        self.ttfts = Histogram()

    @staticmethod
    def answered(resp: ChatResponse) -> Mark:
        """The mark of an answer."""
        return ("ok", resp.prompt_tokens, resp.output_tokens, resp.latency_s, resp.ttft_s)

    @staticmethod
    def hit() -> Mark:
        """The mark of an answer from the cache."""
        return ("hit",)

    @staticmethod
    def failed(item_id: str, exc: LMLinkError, message: str) -> Mark:
        """The mark of a failure (``message`` as written in its line)."""
        return ("error", type(exc).__name__, f"{item_id}: {clip(message, 160)}")

    def count(self, marks: list[Mark]) -> None:
        """Add the results of ``marks`` to the summary."""
        s = self.summary
        latencies, ttfts = self.latencies, self.ttfts
        for mark in marks:
            kind = mark[0]
            if kind == "ok":
                _, prompt_tokens, output_tokens, latency, ttft = mark
                s.ok += 1
                s.prompt_tokens += prompt_tokens or 0
                s.output_tokens += output_tokens or 0
                if latency is not None:
                    latencies.add(latency)
                if ttft is not None:
                    ttfts.add(ttft)
            elif kind == "hit":
                s.ok += 1
                s.cached += 1
            else:
                _, name, example = mark
                s.failed += 1
                s.errors[name] = s.errors.get(name, 0) + 1
                s.error_examples.setdefault(name, example)

    def finish(self) -> None:
        """Put the percentiles in the summary."""
        s = self.summary
        s.latency_p50 = self.latencies.percentile(50)
        s.latency_p95 = self.latencies.percentile(95)
        s.ttft_p50 = self.ttfts.percentile(50)
        s.ttft_p95 = self.ttfts.percentile(95)

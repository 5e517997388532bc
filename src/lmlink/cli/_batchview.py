"""How the batch commands show a run on stderr: a rich progress bar on a terminal, plain
lines every two seconds otherwise (logs, CI), and the summary at the end. ``rich`` is an
optional extra, imported only when a bar is shown."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from ._common import say

if TYPE_CHECKING:
    from lmlink.batch import BatchSummary, Progress

__all__ = ["View", "make_view", "servers", "show_summary", "waiting"]

PLAIN_INTERVAL = 2.0


class View(Protocol):
    """Receives progress snapshots; ``close`` leaves the terminal clean for the summary."""

    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


def _generated(p: Progress) -> bool:
    """Whether tokens/s means anything: not for embeddings, nor while every answer came
    from the cache."""
    return p.generates and not (p.cached and p.cached == p.ok)


def progress_line(p: Progress) -> str:
    """One plain line: ``120/300 (40%) · 3 failed · 12.3 items/s · ...``."""
    pct = 100 * p.done / p.total if p.total else 100.0
    parts = [f"{p.done}/{p.total} ({pct:.0f}%)", f"{p.failed} failed"]
    if p.cached:
        parts.append(f"{p.cached} cached")
    parts.append(f"{p.rate:.1f} items/s")
    if _generated(p):
        parts.append(f"{p.tokens_per_s:,.0f} tok/s")
    parts += [
        f"in flight {p.in_flight}/{p.concurrency}",
        f"elapsed {_eta(p.elapsed_s)}",
    ]
    if not p.final:
        parts.append(f"ETA {_eta(p.eta_s)}")
        if p.waiting_s > 0:
            parts.append(waiting(p))
    if p.endpoints:
        parts.append(servers(p))
    return "lmlink: " + " · ".join(parts)


def waiting(p: Progress) -> str:
    """Why nothing is sent: ``server asks to wait 28 s (Retry-After)``."""
    who = "servers ask" if len(p.endpoints) > 1 else "server asks"
    return f"{who} to wait {max(1, round(p.waiting_s))} s (Retry-After)"


def servers(p: Progress) -> str:
    """Each endpoint's share, rate and state: ``127.0.0.1:8001 62% 41/s up, ...``."""
    shown = []
    for e in p.endpoints:
        host = e.url.split("://", 1)[-1].split("/", 1)[0]
        shown.append(f"{host} {e.share:.0%} {e.items_s:.0f}/s {e.state}")
    return ", ".join(shown)


class PlainView:
    """A line on stderr every ``interval`` seconds, and one at the end."""

    def __init__(self, interval: float = PLAIN_INTERVAL) -> None:
        self._interval = interval
        self._last = time.monotonic()
        self._printed_final = False

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.final:
            if self._printed_final:
                return
            self._printed_final = True
        elif now - self._last < self._interval:
            return
        self._last = now
        say(progress_line(progress))

    def close(self) -> None:
        pass


class NoView:
    """Shows nothing (``--progress off``)."""

    def update(self, progress: Progress) -> None:
        pass

    def close(self) -> None:
        pass


class RichView:
    """A rich progress bar: done/total, rate, tokens/s, errors, concurrency, ETA."""

    def __init__(self, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            console=Console(stderr=True),
            refresh_per_second=8,
        )
        self._task = self._bar.add_task(description, total=None, stats="starting")
        self._bar.start()

    def update(self, progress: Progress) -> None:
        failed = f"[red]{progress.failed} failed[/]" if progress.failed else "0 failed"
        rate = f"{progress.rate:.1f}/s · "
        if _generated(progress):
            rate += f"{progress.tokens_per_s:,.0f} tok/s · "
        stats = f"{rate}{failed} · limit {progress.concurrency} · ETA {_eta(progress.eta_s)}"
        if progress.waiting_s > 0:
            stats += f" · {waiting(progress)}"
        if progress.final:
            stats = f"{rate}{failed}"
        if progress.endpoints:
            stats += f" · {servers(progress)}"
        self._bar.update(
            self._task,
            total=progress.total,
            completed=progress.done,
            stats=stats,
            refresh=progress.final,
        )

    def close(self) -> None:
        self._bar.stop()


def make_view(mode: str, description: str = "batch") -> View:
    """``auto`` is a bar on a terminal (when rich is installed), plain lines otherwise."""
    if mode == "off":
        return NoView()
    if mode in ("auto", "bar") and (mode == "bar" or sys.stderr.isatty()):
        try:
            return RichView(description)
        except ImportError:
            if mode == "bar":
                say("lmlink: no progress bar without rich: pip install 'lmlink[progress]'")
    return PlainView()


def show_summary(summary: BatchSummary, *, title: str) -> None:
    """The summary on stderr: the first line bold, the rest indented."""
    lines = summary.describe().splitlines()
    colour: dict[str, Any] = {"fg": "green"} if summary.succeeded else {}
    if not summary.succeeded:
        colour = {"fg": "yellow"}
    say(f"lmlink {title}: {lines[0]}", bold=True, **colour)
    for line in lines[1:]:
        say(f"  {line}")

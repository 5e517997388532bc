"""Group commit: many finished lines per write and fsync, and nothing counted before its fsync.

Results finish on the event loop; each is handed to :meth:`GroupCommit.add` as its encoded
line and a *mark* (what the summary will count for it). A flusher task takes every line
waiting, writes them in one ``os.write`` (whole lines, so the file still only grows by whole
lines) and runs the ``fsync`` in a thread of its own, so the loop goes on sending and
receiving meanwhile; the lines that finish during that fsync make up the next group. Only
when the fsync covering a line has returned are its marks handed to ``on_commit``: an id
counts as done, for the summary and for progress, once it is on disk, never before.

How many lines go together follows the load: one per fsync when results are rare; when they
come fast, all that finish during one fsync, and at least 2 ms' worth, go in the next.
:meth:`finish` (at the end, after an error or a cancellation) waits for the fsync in flight,
writes and syncs what is left, and commits it: every result that was known is written, as
before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from ._journal import Journal

__all__ = ["GroupCommit"]

_MAX_WAITING = 4096  # lines waiting before producers are asked to wait for the flusher
_GATHER_S = 0.002  # how long a group gathers before its write; small beside any LLM call


class GroupCommit:
    """Writes and fsyncs lines in groups; see the module docstring.

    >>> commit = GroupCommit(journal, on_commit=lambda marks: ...)
    >>> flusher = asyncio.ensure_future(commit.run())
    >>> commit.add(encode_record(record), ("ok", ...))
    >>> ...
    >>> flusher.cancel(); commit.finish()
    """

    def __init__(self, journal: Journal, on_commit: Callable[[list[Any]], None]) -> None:
        self.journal = journal
        self.on_commit = on_commit
        self.groups = 0  # fsyncs done
        self._lines: list[bytes] = []
        self._marks: list[Any] = []
        self._syncing: list[Any] | None = None  # marks written, their fsync under way
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ready: asyncio.Event | None = None
        self._taken: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        """Lines handed in and not yet written."""
        return len(self._lines)

    def add(self, line: bytes, mark: Any) -> None:
        """Hand in one encoded line; ``mark`` goes to ``on_commit`` once it is on disk."""
        self._lines.append(line)
        self._marks.append(mark)
        if self._ready is not None:
            self._ready.set()

    async def room(self) -> None:
        """Wait while too many lines are waiting (a producer faster than the disk)."""
        while len(self._lines) >= _MAX_WAITING and self._taken is not None:
            self._taken.clear()
            await self._taken.wait()

    async def run(self) -> None:
        """The flusher: runs until cancelled."""
        self._ready = ready = asyncio.Event()
        self._taken = taken = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmlink-fsync")
        loop = asyncio.get_running_loop()
        if self._lines:
            ready.set()
        while True:  # cancelled by the runner when the run ends
            await ready.wait()
            await asyncio.sleep(_GATHER_S)  # let a group form: one fsync for all of it
            ready.clear()
            if not self._lines:
                continue
            lines, marks = self._lines, self._marks
            self._lines, self._marks = [], []
            taken.set()
            self.journal.write(lines)
            self._syncing = marks
            await loop.run_in_executor(self._pool, self.journal.sync)
            self._syncing = None
            self.groups += 1
            self.on_commit(marks)

    def finish(self) -> None:
        """Commit everything handed in (blocking): call once the flusher has stopped."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # an fsync still running in it ends first
        marks = self._syncing or []
        self._syncing = None
        if self._lines:
            lines, more = self._lines, self._marks
            self._lines, self._marks = [], []
            self.journal.write(lines)
            marks += more
        if marks:
            self.journal.sync()
            self.groups += 1
            self.on_commit(marks)

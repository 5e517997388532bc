"""Crash-safe, resumable batch runs: many prompts through one server, results in a JSONL file.

>>> summary = lmlink.run_batch(
...     [{"id": "t1", "prompt": "Say hi"}, {"id": "t2", "prompt": "Say bye"}],
...     "out.jsonl", endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b", max_tokens=20,
... )
>>> summary.ok, summary.failed
(2, 0)

Every result is one line of the output, written and fsynced as soon as it is known; run the
same call again after a crash or Ctrl-C and only the missing ids are sent. The first line is
a header record with the run's settings: a file without one is never written to, and a run
with other settings is refused (:class:`SettingsChangedError`). See
:func:`arun_batch` for every option. :func:`run_embed` (``arun_embed``) does the same
for embeddings: ``{"id", "embedding": [...]}`` per line, many inputs per request.
Importing this package loads neither ``asyncio``, ``rich`` nor ``sqlite3``.
"""

from __future__ import annotations

from ._api import arun_batch, run_batch, run_sync
from ._embedapi import arun_embed, run_embed
from ._input import BatchInputError, BatchItem, ItemFormat, Problem, read_items
from ._journal import JournalError, SettingsChangedError
from ._limiter import AdaptiveLimiter, AIMDLimiter, Outcome
from ._progress import BatchSummary, EndpointShare, Progress, ProgressCallback
from ._tasks import Task

__all__ = [
    "AIMDLimiter",
    "AdaptiveLimiter",
    "BatchInputError",
    "BatchItem",
    "BatchSummary",
    "EndpointShare",
    "ItemFormat",
    "JournalError",
    "Outcome",
    "Problem",
    "Progress",
    "ProgressCallback",
    "SettingsChangedError",
    "Task",
    "arun_batch",
    "arun_embed",
    "read_items",
    "run_batch",
    "run_embed",
    "run_sync",
]

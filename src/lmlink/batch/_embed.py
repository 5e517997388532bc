"""The embeddings runner: the batch engine of :mod:`._runner`, sending inputs in groups.

:class:`EmbedRunner` is a :class:`~lmlink.batch._runner.Runner` whose workers take up to
``batch_size`` items at a time and send them as one ``POST /embeddings`` through the same
:class:`~lmlink.batch._pool.EndpointPool` (slots, adaptive limit, retries of 429/503, the
item deadline, failover between servers). Everything else is the batch runner's own: input
reading and ids, the template, the header record (``"lmlink": "embed-output"``, so that
``lmlink batch`` and ``lmlink embed`` refuse each other's files) and the settings check, the
journal with group commit, the done set and resume, ``retry_errors``, progress.

A group whose request fails for something an input can cause (a 400, a 413, a 422, or a
500, which llama-server gives a text too long for its batch) is split in two and each half
sent again, down to single items: one bad input gets the error line, the others their
vectors. A server that says how many inputs it takes (TEI's 422 "maximum allowed batch size
32", or a 413) gets groups of that size from then on. Errors that every item would share
(no server, a refused key, an unknown model or route, a server that does not embed: 501)
stop the run, as in a chat batch.

Each line is ``{"id": "a1", "embedding": [0.0123, ...]}`` or ``{"id", "error": {...}}``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from lmlink import AsyncClient
from lmlink._embed import Embeddings
from lmlink._errors import APIStatusError, ConfigurationError, LMLinkError
from lmlink._log import log

from ._header import EMBED_OUTPUT
from ._input import BatchItem
from ._outcome import is_fatal
from ._pool import EndpointPool
from ._runner import Runner
from ._source import ItemSource
from ._tasks import Task

__all__ = ["DEFAULT_BATCH_SIZE", "EMBED_TASK", "EmbedRunner", "splittable"]

#: Inputs per request unless told otherwise.
DEFAULT_BATCH_SIZE = 32
#: What an embeddings item is: the row's ``text`` or ``prompt``, or the template's text; its
#: other fields (``model``, ``temperature``... included) are data, not request parameters.
EMBED_TASK = Task("embed", None, {}, ("text", "prompt"), allow_messages=False, reads_options=False)

_NO_OPTIONS = BatchItem("", [])
# Statuses an input can cause: bad or too long text (llama-server answers 500 for that).
_SPLIT = frozenset({400, 413, 422, 500})
_NO_EMBEDDINGS = re.compile(r"(does not|doesn't) support embeddings", re.IGNORECASE)
_MAX_BATCH = re.compile(r"maximum allowed batch size\D{0,8}(\d+)", re.IGNORECASE)


def splittable(exc: LMLinkError) -> bool:
    """Whether a group's failure may be one input's fault: then each half is tried alone."""
    return isinstance(exc, APIStatusError) and exc.status_code in _SPLIT


def _fatal(exc: LMLinkError) -> bool:
    """Failures every group would share: a server or model that does not embed at all
    (llama-server's 501, vLLM's 400 "does not support Embeddings API") among them."""
    if isinstance(exc, APIStatusError) and (
        exc.status_code == 501 or _NO_EMBEDDINGS.search(exc.message)
    ):
        return True
    return is_fatal(exc, _NO_OPTIONS)


def _text(item: BatchItem) -> str:
    content = item.messages[-1].get("content") if item.messages else None
    return content if isinstance(content, str) else ""


class EmbedRunner(Runner):
    """One embeddings run (see the module docstring); the arguments of
    :class:`~lmlink.batch._runner.Runner`, plus ``batch_size``. ``params`` are sent with
    every request (``{"dimensions": 256}``) and recorded in the header.

    >>> runner = EmbedRunner(items, "vectors.jsonl", model="nomic-embed-text", batch_size=64)
    >>> summary = await runner.run()
    """

    kind = EMBED_OUTPUT

    def __init__(
        self,
        items: ItemSource | list[BatchItem],
        output: str | Path,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        **options: Any,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, not {batch_size!r}")
        task = options.pop("task", None) or EMBED_TASK
        if task.name != EMBED_TASK.name:
            raise ConfigurationError("an embeddings run takes no task")
        if options.get("cache") is not None:
            raise ConfigurationError("an embeddings run has no cache")
        if options.get("system"):
            raise ConfigurationError("an embeddings run has no system message")
        params = dict(options.pop("params", None) or {})
        dimensions = params.get("dimensions")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise ConfigurationError(f"dimensions must be a positive integer, not {dimensions!r}")
        super().__init__(items, output, task=task, params=params, **options)
        self.batch_size = batch_size

    async def _worker(self) -> None:
        assert self._job is not None
        assert self._commit is not None
        pool, _, model, _ = self._job
        while True:  # bounded: ends when the input does
            group = list(itertools.islice(self._work, self.batch_size))
            if not group:
                self._exhausted = True
                return
            await self._embed(pool, model, group)
            await self._commit.room()

    async def _embed(self, pool: EndpointPool, model: str | None, group: list[BatchItem]) -> None:
        """Embed ``group`` in one request; on a failure an input may have caused, each half
        on its own (or parts of the size the server said it takes)."""
        texts = [_text(item) for item in group]
        params = self._params

        def send(client: AsyncClient, options: dict[str, Any]) -> Any:
            return client.embed(texts, model=model, **{**params, **options})

        result = await pool.ask(
            [], model=model, params={}, fatal=_fatal, label=_label(group), send=send
        )
        if isinstance(result, LMLinkError):
            if len(group) > 1 and splittable(result):
                cap = self._learn_cap(result, len(group))
                size = cap or (len(group) + 1) // 2
                for start in range(0, len(group), size):
                    await self._embed(pool, model, group[start : start + size])
                return
            for item in group:
                self._record_error(item, result)
            return
        self._record_vectors(group, result)

    def _learn_cap(self, exc: LMLinkError, sent: int) -> int | None:
        """The most inputs the server takes per request, if ``exc`` says so (TEI's 422
        "batch size 64 > maximum allowed batch size 32", a 413); later groups keep to it,
        instead of every one of them failing and being split."""
        found = _MAX_BATCH.search(exc.message)
        if found is not None:
            cap = max(1, int(found.group(1)))
        elif isinstance(exc, APIStatusError) and exc.status_code == 413:
            cap = max(1, sent // 2)
        else:
            return None
        if cap < self.batch_size:
            log.warning(
                "lmlink: the server takes at most %d inputs per request; sending %d at a time",
                cap,
                cap,
            )
            self.batch_size = cap
        return min(cap, sent - 1)  # smaller than what failed, whatever the server said

    def _record_vectors(self, group: list[BatchItem], result: Embeddings) -> None:
        latency = result.latency_s
        for n, (item, vector) in enumerate(zip(group, result.vectors, strict=True)):
            # The request's prompt tokens are counted once, with its first item.
            tokens = result.prompt_tokens if n == 0 else None
            self._stage({"id": item.id, "embedding": vector}, ("ok", tokens, None, latency, None))


def _label(group: list[BatchItem]) -> str:
    if len(group) == 1:
        return group[0].id
    return f"{group[0].id}..{group[-1].id} ({len(group)} inputs)"

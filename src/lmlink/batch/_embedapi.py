"""The embeddings entry points: :func:`arun_embed`, and :func:`run_embed` for code that is
not async. The engine (:mod:`._embed`, which needs asyncio) is imported when a run starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlink._config import RetryPolicy, Timeout

from ._api import check_paths, run_sync
from ._progress import BatchSummary, ProgressCallback
from ._shard import parse_shard

if TYPE_CHECKING:
    from lmlink import AsyncClient

    from ._runner import Items

__all__ = ["arun_embed", "run_embed"]


async def arun_embed(
    items: Items,
    output: str | Path,
    *,
    endpoint: str | Sequence[str] | None = None,
    model: str | None = None,
    api_key: str | None = None,
    client: AsyncClient | None = None,
    concurrency: int | str | None = None,
    timeout: float | Timeout = 120.0,
    retry: RetryPolicy | None = None,
    template: str | None = None,
    batch_size: int = 32,
    dimensions: int | None = None,
    retry_errors: bool = False,
    on_progress: ProgressCallback | None = None,
    allow_changed_settings: bool = False,
    shard: tuple[int, int] | str | None = None,
    **params: Any,
) -> BatchSummary:
    """The embedding of every item that has no line in ``output`` yet, ``batch_size``
    inputs per request; one line per item: ``{"id", "embedding": [...]}`` or
    ``{"id", "error": {...}}``.

    ``items`` as for :func:`~lmlink.batch.arun_batch`: a JSONL or CSV file, ``"-"``, or
    dicts; the text is a row's ``text`` or ``prompt`` field, or ``template`` rendered with
    its fields. ``dimensions`` and other keywords go into every request (and into the
    output's header: a run with other settings is refused, :class:`SettingsChangedError`).
    Crash-safe and resumable like a chat batch, with the same adaptive concurrency,
    retries, ``retry_errors``, ``shard`` and endpoints; a group that fails because of one
    input is split until that input is alone, so only it gets an error line.

    >>> summary = lmlink.batch.run_embed("docs.jsonl", "vectors.jsonl",
    ...                                  model="nomic-embed-text", batch_size=64)
    """
    from ._embed import EMBED_TASK, EmbedRunner
    from ._runner import ceiling_of, load_items

    ceiling_of(concurrency)
    part = parse_shard(shard)
    if dimensions is not None:
        params["dimensions"] = dimensions
    loaded = load_items(items, EMBED_TASK, template, None)
    source = items if isinstance(items, (str, Path)) and str(items) != "-" else None
    check_paths(source, output)
    runner = EmbedRunner(
        loaded,
        output,
        batch_size=batch_size,
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        client=client,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        retry_errors=retry_errors,
        on_progress=on_progress,
        params=params,
        template=template,
        allow_changed_settings=allow_changed_settings,
        shard=part,
    )
    return await runner.run()


def run_embed(
    items: Items,
    output: str | Path,
    *,
    endpoint: str | Sequence[str] | None = None,
    model: str | None = None,
    api_key: str | None = None,
    client: AsyncClient | None = None,
    concurrency: int | str | None = None,
    timeout: float | Timeout = 120.0,
    retry: RetryPolicy | None = None,
    template: str | None = None,
    batch_size: int = 32,
    dimensions: int | None = None,
    retry_errors: bool = False,
    on_progress: ProgressCallback | None = None,
    allow_changed_settings: bool = False,
    shard: tuple[int, int] | str | None = None,
    **params: Any,
) -> BatchSummary:
    """:func:`arun_embed` for code that is not async; same arguments, same result.

    >>> summary = lmlink.batch.run_embed("docs.jsonl", "vectors.jsonl", model="bge-m3")
    >>> summary.ok, summary.failed
    """
    return run_sync(
        arun_embed(
            items,
            output,
            endpoint=endpoint,
            model=model,
            api_key=api_key,
            client=client,
            concurrency=concurrency,
            timeout=timeout,
            retry=retry,
            template=template,
            batch_size=batch_size,
            dimensions=dimensions,
            retry_errors=retry_errors,
            on_progress=on_progress,
            allow_changed_settings=allow_changed_settings,
            shard=shard,
            **params,
        )
    )

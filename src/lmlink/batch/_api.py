"""The entry points: :func:`arun_batch`, and :func:`run_batch` for code that is not async.

The engine (:mod:`._runner`, which needs asyncio) is imported when a batch runs, not when
``lmlink.batch`` is imported.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lmlink._config import RetryPolicy, Timeout
from lmlink._errors import ConfigurationError

from ._progress import BatchSummary, ProgressCallback
from ._shard import parse_shard
from ._tasks import Task

if TYPE_CHECKING:
    from lmlink import AsyncClient

    from ._runner import Items

__all__ = ["arun_batch", "check_paths", "run_batch", "run_sync", "same_file"]

T = TypeVar("T")


async def arun_batch(
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
    task: Task | None = None,
    template: str | None = None,
    system: str | None = None,
    cache: str | Path | None = None,
    retry_errors: bool = False,
    stream: bool | None = None,
    on_progress: ProgressCallback | None = None,
    allow_changed_settings: bool = False,
    shard: tuple[int, int] | str | None = None,
    **params: Any,
) -> BatchSummary:
    """Send every item that has no line in ``output`` yet; append one line per result.

    ``items``: a JSONL or CSV file (``.csv``, header row with an ``id`` column), ``"-"``
    for JSONL on stdin, or an iterable of dicts like ``{"id": "t1", "prompt": "..."}``,
    ``{"id": "t1", "messages": [...]}`` or any fields rendered through ``template``
    (``"Summarise: {text}"``); ``system`` adds a system message. Every input problem is
    raised at once as :class:`BatchInputError` before anything is sent or written.

    Each line of ``output`` is ``{"id", "content", "reasoning", "parsed", "finish_reason",
    "prompt_tokens", "output_tokens", "latency_s", "ttft_s", "model"}`` or ``{"id",
    "error": {"type", "message", "status_code"}}``, in the order results arrive.

    ``concurrency``: by default (``None`` or ``"auto"``) the number of requests in flight
    adapts to the server: it starts at 1, doubles while throughput grows, settles where more
    would only add latency, halves on 429, 503 and timeouts, and keeps probing so that it
    follows a server that changes (:class:`~lmlink.batch.AdaptiveLimiter`). An integer is
    the most it may reach, and where it starts: it comes down only if the server does as
    well with fewer. ``cache`` is an SQLite file of answers
    (keyed on endpoint, model, parameters and messages; a hit sends nothing).
    ``retry_errors`` sends the items whose line is an error again. The output's first line
    is a header record with the run's settings (task, labels, schema, template, system,
    model, sampling parameters); adding to an output made with other settings raises
    :class:`SettingsChangedError` unless ``allow_changed_settings`` is set, and a file that
    is not lmlink output is never touched (:class:`JournalError`). ``stream`` picks
    streamed or plain requests (default: streams, which give a real time to first token,
    except for structured output, which is re-asked when invalid only on plain requests).
    ``task`` is a preset (:meth:`Task.classify`, :meth:`Task.summarize`,
    :meth:`Task.extract`). Other keywords (``temperature=``, ``max_tokens=``,
    ``response_format=``, ...) go into every request; a row's own ``max_tokens``,
    ``temperature``, ... win. ``on_progress`` gets a :class:`Progress` after each result
    and about twice a second. ``shard=(K, N)`` runs only the ids of shard K of N (a stable
    hash of the id; N runs with their own outputs cover every id once; the shard is one of
    the output's settings).

    ``endpoint`` may be a list of URLs (or ``LMLINK_ENDPOINT`` a comma-separated list):
    the servers share the run, each with its own client and adaptive limit (with an
    integer ``concurrency``, the most for each); a server that stops answering is taken
    out, its items finish on the others, and it rejoins once it answers again. The
    summary's ``endpoints`` gives each server's share, rate and state.

    Returns a :class:`BatchSummary`. A failure that every item would share (no server, a
    refused connection, a wrong API key, an unknown model) stops the run and is raised;
    what was finished stays in ``output`` and the next run continues from there.

    >>> summary = await lmlink.arun_batch("in.jsonl", "out.jsonl", model="qwen3:8b")
    """
    from ._runner import Runner, ceiling_of, load_items

    ceiling_of(concurrency)  # a bad value is refused before the input is read
    task = task or Task()
    part = parse_shard(shard)
    loaded = load_items(items, task, template, system)
    source = items if isinstance(items, (str, Path)) and str(items) != "-" else None
    check_paths(source, output, cache)
    runner = Runner(
        loaded,
        output,
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        client=client,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        task=task,
        cache=cache,
        retry_errors=retry_errors,
        stream=stream,
        on_progress=on_progress,
        params=params,
        template=template,
        system=system,
        allow_changed_settings=allow_changed_settings,
        shard=part,
    )
    return await runner.run()


def run_batch(
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
    task: Task | None = None,
    template: str | None = None,
    system: str | None = None,
    cache: str | Path | None = None,
    retry_errors: bool = False,
    stream: bool | None = None,
    on_progress: ProgressCallback | None = None,
    allow_changed_settings: bool = False,
    shard: tuple[int, int] | str | None = None,
    **params: Any,
) -> BatchSummary:
    """:func:`arun_batch` for code that is not async; same arguments, same result.

    It runs its own event loop (the runner is one asyncio engine, not a second copy in
    threads); called where a loop already runs (a notebook), it runs in a worker thread
    (:func:`run_sync`), though ``await lmlink.arun_batch(...)`` is the natural form there.
    Ctrl-C cancels the requests in flight and raises KeyboardInterrupt; the output is intact.

    >>> summary = lmlink.run_batch("tickets.jsonl", "out.jsonl", model="qwen3:8b",
    ...                            task=lmlink.batch.Task.classify(["billing", "bug", "other"]))
    >>> print(summary.describe())
    """
    return run_sync(
        arun_batch(
            items,
            output,
            endpoint=endpoint,
            model=model,
            api_key=api_key,
            client=client,
            concurrency=concurrency,
            timeout=timeout,
            retry=retry,
            task=task,
            template=template,
            system=system,
            cache=cache,
            retry_errors=retry_errors,
            stream=stream,
            on_progress=on_progress,
            allow_changed_settings=allow_changed_settings,
            shard=shard,
            **params,
        )
    )


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from code that is not async.

    Outside an event loop: ``asyncio.run``. Inside a running one (a Jupyter notebook, a
    callback of an async framework) that loop cannot be blocked into running it, so ``coro``
    gets a loop of its own in a worker thread while this thread waits. Ctrl-C cancels it
    there just as ``asyncio.run`` would, and the interrupt reaches the caller only once the
    worker has stopped (the output file is whole and closed): KeyboardInterrupt under a
    notebook kernel, CancelledError under ``asyncio.run`` (whose SIGINT handler cancels its
    main task; ``asyncio.run`` then raises KeyboardInterrupt).
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return _run_in_thread(coro)


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio
    import contextlib
    import threading

    outer = asyncio.current_task()
    cancelling = getattr(outer, "cancelling", None)  # Python 3.11+
    cancels = cancelling() if cancelling is not None else 0
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    outcome: list[tuple[bool, Any]] = []  # (returned, value or exception)
    done = threading.Event()  # set when the worker's loop is closed

    def main() -> None:
        try:
            outcome.append((True, loop.run_until_complete(task)))
        except BaseException as exc:  # handed over to the waiting thread
            outcome.append((False, exc))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            done.set()

    def stop() -> None:
        if not done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it ended
                loop.call_soon_threadsafe(task.cancel)
        done.wait()

    thread = threading.Thread(target=main, name="lmlink-run-sync", daemon=True)
    thread.start()
    # An Event, not Thread.join: a KeyboardInterrupt inside join() can mark a running
    # thread as stopped (CPython issue 45274), and this must not return before it has.
    try:
        while not done.wait(0.2):  # bounded: the coroutine ends, or is cancelled below
            if cancelling is not None and cancelling() > cancels:
                stop()  # asyncio.run's Ctrl-C handler cancelled the caller's task
                raise asyncio.CancelledError
    except KeyboardInterrupt:
        stop()
        raise
    thread.join()
    [(returned, value)] = outcome
    if not returned:
        raise value
    return value  # type: ignore[no-any-return]


def check_paths(
    source: str | Path | None, output: str | Path, cache: str | Path | None = None
) -> None:
    """Refuse an output that is the input file, and a cache that is the output or the
    input: the same path, a symlink to it or a hard link of it (the same inode)."""
    if source is not None and same_file(source, output):
        raise ConfigurationError(f"the output {output} is the input file; pick another output")
    if cache is not None:
        if same_file(cache, output):
            raise ConfigurationError(
                f"the cache {cache} is the output file; give the cache a file of its own"
            )
        if source is not None and same_file(cache, source):
            raise ConfigurationError(
                f"the cache {cache} is the input file; give the cache a file of its own"
            )


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: equal once resolved, or the same inode."""
    import os

    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.samestat(os.stat(a), os.stat(b))
    except (OSError, ValueError):
        return False

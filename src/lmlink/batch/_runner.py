"""The batch engine: every pending item through one :class:`~lmlink.AsyncClient`, as many
at a time as the :class:`~lmlink.batch._limiter.AdaptiveLimiter` allows, each result
committed to the output in groups (:mod:`lmlink.batch._commit`). How a failure is treated
(per item, overload, fatal) is in :mod:`lmlink.batch._outcome`.

Memory depends on the concurrency, not on the input: the input is read one row at a time
(:mod:`lmlink.batch._source`), the output's ids are 8 bytes each
(:mod:`lmlink.batch._doneset`), latencies go into histograms (:mod:`lmlink.batch._stats`)
and the cache is asked one item at a time. Workers, twice as many as the limit (plus
two), each take the next item, wait for a slot per attempt, and write the result; so the
items under way never outnumber twice the limit's highest value, and a freed slot is taken
at once by a worker that is waiting with its item.

When the runner made the client, 429 and 503 are retried here rather than inside the
client, so that every one of them reaches the limiter; the retry budget and the waits are
the same policy's. A fatal failure stops the run: no line is written for it, the in-flight
requests are cancelled, and the error is raised.

Cancellation (Ctrl-C) stops the in-flight requests; every result already known is written
and fsynced before the run returns, and the file only ever grows by whole lines.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lmlink import AsyncClient
from lmlink import _retry as retry_module
from lmlink._config import RetryPolicy, Timeout
from lmlink._errors import (
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    LMLinkError,
    ModelLoadingError,
    clip,
)
from lmlink._log import log
from lmlink._models import ChatResponse
from lmlink._retry import RetryState

from ._cache import ResponseCache, cache_key
from ._commit import GroupCommit
from ._doneset import DigestSet, digest
from ._header import describe_changes, make_settings
from ._input import BatchInputError, BatchItem, Problem, items_from_rows
from ._journal import Journal, JournalState, SettingsChangedError, encode_record
from ._limiter import AUTO_CEILING, AdaptiveLimiter, Outcome, Ticket
from ._outcome import error_record, is_fatal, is_overload, success_record
from ._progress import BatchSummary, Progress, ProgressCallback
from ._source import ItemSource, scan_items
from ._stats import Histogram
from ._tasks import Task, same_extract_question

__all__ = ["Concurrency", "Items", "Runner", "ceiling_of", "load_items"]


_TICK = 0.5
_OWN_RETRY = frozenset({429, 503})

Items = str | Path | Iterable[Mapping[str, Any] | BatchItem]
Concurrency = int | str | None


def load_items(
    items: Items, task: Task, template: str | None, system: str | None
) -> ItemSource | list[BatchItem]:
    """The validated items of a file path (read again, row by row, when iterated) or of an
    iterable of dicts / :class:`BatchItem` (a list)."""
    fmt = task.item_format(template, system)
    if isinstance(items, (str, Path)):
        return scan_items(items, fmt)
    if isinstance(items, (bytes, Mapping)):
        raise BatchInputError.of("items", [Problem(0, "items must be a path or a list of dicts")])
    return items_from_rows(enumerate(items, 1), fmt, source="items", unit="item")


def ceiling_of(concurrency: Concurrency) -> int:
    """The most requests in flight: ``None`` or ``"auto"`` for the adaptive limiter's own
    ceiling, else a positive integer (the adaptive limit never goes above it)."""
    if concurrency is None or concurrency == "auto":
        return AUTO_CEILING
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(
            f'concurrency must be a positive integer or "auto", not {concurrency!r}'
        )
    return concurrency


class Runner:
    """One batch run. :meth:`prepare` opens the output (and says what is already done),
    :meth:`run` does the rest; :attr:`summary` is kept up to date throughout.

    >>> runner = Runner(items, "out.jsonl", model="qwen3:8b")
    >>> state = runner.prepare()        # ids already done, torn line repaired
    >>> summary = await runner.run()
    """

    def __init__(
        self,
        items: ItemSource | list[BatchItem],
        output: str | Path,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
        concurrency: Concurrency = None,
        timeout: float | Timeout = 120.0,
        retry: RetryPolicy | None = None,
        task: Task | None = None,
        cache: str | Path | None = None,
        retry_errors: bool = False,
        stream: bool | None = None,
        on_progress: ProgressCallback | None = None,
        params: Mapping[str, Any] | None = None,
        template: str | None = None,
        system: str | None = None,
        allow_changed_settings: bool = False,
    ) -> None:
        ceiling = ceiling_of(concurrency)
        if client is not None and not isinstance(client, AsyncClient):
            raise ConfigurationError("client= must be an lmlink.AsyncClient")
        if client is not None and (endpoint is not None or api_key is not None):
            raise ConfigurationError("give client= or endpoint=/api_key=, not both")
        self.items = items
        self.output = Path(output)
        self._endpoint = endpoint
        self._model = model
        self._api_key = api_key
        self._client = client
        self._redact: Any = str  # the client's, once there is one
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self.task = task or Task()
        self._cache_path = cache
        self._retry_errors = retry_errors
        self._stream = stream
        self.on_progress = on_progress
        self._params = {**self.task.params, **(params or {})}
        self._template = template
        self._system = system
        self._allow_changed = allow_changed_settings
        given = client.timeout if client is not None else Timeout.coerce(timeout)
        self._total = given.total  # every item's deadline, the runner's own waits included
        # Auto starts low and ramps up; a limit given by hand is where it starts (it only
        # comes down if the server does as well with fewer).
        auto = concurrency is None or concurrency == "auto"
        self.limiter = AdaptiveLimiter(ceiling, initial=1 if auto else ceiling)
        self.summary = BatchSummary(self.output, total=len(items), concurrency=ceiling)
        self.journal: Journal | None = None
        self._redo = DigestSet()  # ids whose error lines --retry-errors replaces
        self.pending_count = 0
        self._commit: GroupCommit | None = None
        self._latencies = Histogram()
        self._ttfts = Histogram()
        self._started = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._workers: set[asyncio.Future[Any]] = set()
        self._work: Iterator[BatchItem] = iter(())
        self._job: tuple[AsyncClient, ResponseCache | None, str | None, bool] | None = None
        self._exhausted = False
        self._ended: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- setup --------------------------------------------------------------------------

    def _ids(self) -> DigestSet:
        items = self.items
        if isinstance(items, ItemSource):
            return items.ids
        return DigestSet.of(digest(i.id) for i in items)

    def prepare(self) -> JournalState:
        """Open and lock the output, repair a torn last line, and count the pending items."""
        if self.journal is None:
            # The model, when not given, is known once the server is asked; run() checks
            # it then, before anything is sent.
            given = self._model or (self._client.model if self._client else None)
            self.journal = Journal.open(
                self.output,
                adopt=self._allow_changed,
                check=lambda state: self._check_settings(
                    given, model_known=given is not None, state=state
                ),
            )
            done = self.journal.state.done
            ids = self._ids()
            skipped = sum(1 for d in ids if d in done) if len(done) else 0
            failed = DigestSet.of(d for d in done.errors if d in ids)
            # Error lines to redo go once the settings are known to match (in run()).
            if self._retry_errors:
                self._redo = failed
            self.pending_count = len(self.items) - skipped + len(self._redo)
            self.summary.skipped = skipped - len(self._redo)
            self.summary.retried = len(self._redo)
            self.summary.repaired_bytes = self.journal.state.repaired_bytes
            self.summary.earlier_errors = len(failed) - len(self._redo)
        return self.journal.state

    def pending(self) -> Iterator[BatchItem]:
        """The items that have no line in the output (or only an error line, with
        ``retry_errors``), read as they are needed."""
        assert self.journal is not None
        done = self.journal.state.done
        redo = self._redo
        if not len(done):
            yield from self.items
            return
        for item in self.items:
            key = digest(item.id)
            if key not in done or (len(redo) and key in redo):
                yield item

    def close(self) -> None:
        """Release the output file (after a run, or instead of one). A file this run
        created and wrote no result to is removed: a failed start leaves nothing behind."""
        if self.journal is not None:
            self.journal.discard()
        if isinstance(self.items, ItemSource):
            self.items.close()

    def settings(self, model: str | None) -> dict[str, Any]:
        """The settings record of this run (see :mod:`lmlink.batch._header`)."""
        return make_settings(
            task=self.task.name,
            instructions=self.task.instructions,
            template=self._template,
            system=self._system,
            model=model,
            params=self._params,
        )

    def _check_settings(
        self, model: str | None, *, model_known: bool, state: JournalState | None = None
    ) -> None:
        """Refuse to add to an output made with other settings, unless allowed."""
        if state is None:
            assert self.journal is not None
            state = self.journal.state
        header = state.header
        old = header.get("settings") if header is not None else None
        if not isinstance(old, dict) or self._allow_changed or not len(state.done):
            return  # no settings recorded, changes allowed, or no answer to mix with
        new = self.settings(model)
        if not model_known:
            new["model"] = old.get("model")
        if same_extract_question(old, new):
            new["instructions"] = old.get("instructions")
        changes = describe_changes(old, new)
        if changes:
            raise SettingsChangedError(
                f"{self.output} holds answers made with other settings ({'; '.join(changes)}); "
                "give another output, or --allow-changed-settings (allow_changed_settings="
                "True) to add to it anyway",
                changes=changes,
            )

    def _make_client(self) -> AsyncClient:
        # 429 and 503 are retried by the runner, so the limiter hears of every one.
        policy = self._retry.replace(statuses=self._retry.statuses - _OWN_RETRY)
        return AsyncClient(
            endpoint=self._endpoint,
            model=self._model,
            api_key=self._api_key,
            timeout=self._timeout,
            retry=policy,
            max_connections=max(self.limiter.ceiling, 1),
        )

    async def _resolve(self, client: AsyncClient) -> str | None:
        """The run's model; asks the server (which also finds a local one, if discovery is
        on) when no endpoint or no model is set."""
        model = self._model or client.model
        needs_model = model is None and any("model" not in i.options for i in self.pending())
        if client.endpoint is None or needs_model:
            found = await client.models()
            if model is None and needs_model:
                if not found:
                    raise ConfigurationError("no model given and the server lists none")
                model = found[0].id
        self.summary.model = model
        self.summary.endpoint = client.endpoint
        return model

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> BatchSummary:
        """Run every pending item; return the summary. Raises the fatal error, if any
        (the summary still says what was done), and CancelledError when cancelled."""
        self.prepare()
        self._started = time.monotonic()
        owned = self._client is None
        client: AsyncClient | None = None
        cache: ResponseCache | None = None
        try:
            if self.pending_count:
                client = self._client or self._make_client()
                self._redact = client.redact
                cache = ResponseCache(self._cache_path) if self._cache_path is not None else None
                model = await self._resolve(client)
                self._check_settings(model, model_known=True)
                assert self.journal is not None
                self.journal.drop_errors(self._redo)
                self.journal.write_header(self.settings(model))
                await self._drive(client, cache, model, retry_here=owned)
        except asyncio.CancelledError:
            self.summary.interrupted = True
            raise
        except LMLinkError as exc:
            self.summary.stopped_by = self._redact(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                if self._commit is not None:
                    self._commit.finish()
            finally:
                self._finish_summary()
                self.close()
                if cache is not None:
                    self.summary.cache_error = cache.error
                    cache.close()
                if client is not None and owned:
                    await client.aclose()
                self._emit(final=True)
        return self.summary

    async def _drive(
        self,
        client: AsyncClient,
        cache: ResponseCache | None,
        model: str | None,
        *,
        retry_here: bool,
    ) -> None:
        assert self.journal is not None
        self._commit = commit = GroupCommit(self.journal, self._committed)
        self._ended = ended = asyncio.Event()
        self._work = self.pending()
        self._job = (client, cache, model, retry_here)
        flusher = asyncio.ensure_future(commit.run())
        flusher.add_done_callback(self._helper_ended)
        ticker = asyncio.ensure_future(self._tick())
        self._emit()
        try:
            self._spawn()
            await ended.wait()
            if self._failure is not None:
                raise self._failure
        finally:
            self._exhausted = True  # no new workers from here on
            helpers: list[asyncio.Future[Any]] = [*self._workers, ticker, flusher]
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _spawn(self) -> None:
        """Enough workers for the limit: twice as many, so that a slot freed while its
        worker writes the result is taken at once by one that is waiting."""
        want = min(self.limiter.ceiling, 2 * self.limiter.limit + 2)
        loop = asyncio.get_running_loop()
        while len(self._workers) < want and not self._exhausted and self._failure is None:
            worker = loop.create_task(self._worker())
            self._workers.add(worker)
            worker.add_done_callback(self._worker_ended)

    def _worker_ended(self, worker: asyncio.Future[Any]) -> None:
        self._workers.discard(worker)
        if not worker.cancelled() and worker.exception() is not None:
            self._failure = self._failure or worker.exception()
        if (self._failure is not None or not self._workers) and self._ended is not None:
            self._ended.set()

    def _helper_ended(self, helper: asyncio.Future[Any]) -> None:
        if not helper.cancelled() and helper.exception() is not None:
            self._failure = self._failure or helper.exception()
            if self._ended is not None:
                self._ended.set()

    async def _tick(self) -> None:
        while True:  # cancelled when the workers are done
            await asyncio.sleep(_TICK)
            self._emit()

    async def _worker(self) -> None:
        assert self._job is not None
        assert self._commit is not None
        client, cache, model, retry_here = self._job
        hits = 0
        while True:  # bounded: ends when the input does
            item = next(self._work, None)
            if item is None:
                self._exhausted = True
                return
            item_model = item.options.get("model", model)
            params = {**self._params, **{k: v for k, v in item.options.items() if k != "model"}}
            key = None
            if cache is not None and client.endpoint is not None and item_model is not None:
                key = cache_key(client.endpoint, item_model, item.messages, params)
                hit = None if key is None else cache.get(key)
                if hit is not None:
                    self._record_cached(item, hit)
                    hits += 1
                    if hits % 16 == 0:
                        await asyncio.sleep(0)  # a run of hits must not starve the loop
                    await self._commit.room()
                    continue
            result = await self._attempts(client, item, item_model, params, retry_here)
            if isinstance(result, LMLinkError):
                self._record_error(item, result)
            else:
                record = success_record(item.id, result, self.task, client.redact)
                self._record_ok(record, result)
                if cache is not None and key is not None:
                    cache.put(key, {k: v for k, v in record.items() if k != "id"})

    async def _attempts(
        self,
        client: AsyncClient,
        item: BatchItem,
        model: str | None,
        params: dict[str, Any],
        retry_here: bool,
    ) -> ChatResponse | LMLinkError:
        """The answer for ``item``, or its per-item error; raises a fatal one. With a total
        timeout, the item's attempts and the waits between them end by one deadline."""
        state: RetryState | None = None
        deadline: float | None = None
        # Streams give a real TTFT; structured output is re-asked only on plain requests.
        stream = self._stream if self._stream is not None else "response_format" not in params
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            ticket = await self._acquire(deadline)
            if ticket is None:  # the deadline passed while the item waited for a slot
                return self._past_deadline()
            outcome = Outcome.NEUTRAL
            error: LMLinkError | None = None
            if deadline is None and self._total is not None:
                deadline = time.monotonic() + self._total
            try:
                if stream:
                    call = client.chat_stream(item.messages, model=model, **params)
                else:
                    call = client.chat(item.messages, model=model, **params)
                resp = await self._within(call, deadline)
                outcome = Outcome.OK
                return resp
            except LMLinkError as exc:
                if is_fatal(exc, item):
                    raise
                if is_overload(exc):
                    outcome = Outcome.OVERLOAD
                error = exc
            finally:
                self._release(ticket, outcome, error)
            own = isinstance(error, APIStatusError) and error.status_code in _OWN_RETRY
            if not (retry_here and own and not isinstance(error, ModelLoadingError)):
                return error
            state = state or RetryState(self._retry, deadline)
            try:
                delay = state.delay_for(error)  # raises if the wait would pass the deadline
            except LMLinkError:
                return error
            log.info(
                "lmlink: batch item %s: retry in %.2f s after: %s",
                item.id,
                delay,
                self._redact(str(error)),
            )
            await asyncio.sleep(delay)

    async def _within(self, call: Awaitable[ChatResponse], deadline: float | None) -> ChatResponse:
        """``await call``, cut off at ``deadline``: the client's own deadline starts with
        each call, the item's with its first attempt."""
        if deadline is None:
            return await call
        left = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(call, max(left, 0.0))
        except asyncio.TimeoutError:
            raise self._past_deadline() from None

    def _past_deadline(self) -> APITimeoutError:
        return APITimeoutError(
            f"the item's total timeout of {self._total:g} s passed",
            phase="total",
            timeout=self._total,
            reason="timeout",
        )

    async def _acquire(self, deadline: float | None = None) -> Ticket | None:
        """A limiter ticket; None if ``deadline`` passes first."""
        loop = asyncio.get_running_loop()
        while True:  # bounded: every finished request wakes a waiter, pauses end
            now = time.monotonic()
            ticket = self.limiter.try_start(now)
            if ticket is not None:
                return ticket
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                return None
            pause = self.limiter.wait_s(now)
            if pause > 0:
                await asyncio.sleep(pause if left is None else min(pause, left))
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                if left is None:
                    await waiter
                else:
                    await asyncio.wait_for(asyncio.shield(waiter), left)
            except asyncio.TimeoutError:
                return None
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _release(self, ticket: Ticket, outcome: Outcome, error: LMLinkError | None) -> None:
        after = getattr(error, "retry_after", None)
        if retry_module._instant:  # test suites skip every wait, this one too
            after = None
        elif after is not None:
            # Every new request holds back as long as a retry of this one would wait, and
            # never longer than an item may take in all.
            after = min(after, self._retry.retry_after_max, self._total or after)
        self.limiter.finish(ticket, outcome, time.monotonic(), retry_after=after)
        free = self.limiter.limit - self.limiter.in_flight
        waiters = self._waiters
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
        if len(self._workers) < 2 * self.limiter.limit + 2 and not self._exhausted:
            self._spawn()  # the limit grew

    # -- bookkeeping: staged at once, counted once on disk ------------------------------

    def _stage(self, record: Mapping[str, Any], mark: tuple[Any, ...]) -> None:
        assert self._commit is not None
        self._commit.add(encode_record(record), mark)

    def _record_ok(self, record: dict[str, Any], resp: ChatResponse) -> None:
        mark = ("ok", resp.prompt_tokens, resp.output_tokens, resp.latency_s, resp.ttft_s)
        self._stage(record, mark)

    def _record_cached(self, item: BatchItem, stored: dict[str, Any]) -> None:
        self._stage({"id": item.id, **{k: v for k, v in stored.items() if k != "id"}}, ("hit",))

    def _record_error(self, item: BatchItem, exc: LMLinkError) -> None:
        record = error_record(item.id, exc, self._redact)
        example = f"{item.id}: {clip(record['error']['message'], 160)}"
        self._stage(record, ("error", type(exc).__name__, example))

    def _committed(self, marks: list[tuple[Any, ...]]) -> None:
        """Count the results whose lines the last fsync covered."""
        s = self.summary
        latencies, ttfts = self._latencies, self._ttfts
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
        self._emit()

    def _finish_summary(self) -> None:
        s = self.summary
        s.elapsed_s = time.monotonic() - self._started if self._started else 0.0
        s.latency_p50 = self._latencies.percentile(50)
        s.latency_p95 = self._latencies.percentile(95)
        s.ttft_p50 = self._ttfts.percentile(50)
        s.ttft_p95 = self._ttfts.percentile(95)
        lim = self.limiter
        if self._commit is not None:
            s.concurrency_range = (lim.low, lim.high)
            s.concurrency_settled = lim.cruise

    def progress(self, *, final: bool = False) -> Progress:
        """A snapshot of the run so far."""
        s = self.summary
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return Progress(
            total=self.pending_count,
            done=s.ok + s.failed,
            ok=s.ok,
            failed=s.failed,
            cached=s.cached,
            in_flight=self.limiter.in_flight,
            concurrency=self.limiter.limit,
            output_tokens=s.output_tokens,
            elapsed_s=elapsed,
            final=final,
            ceiling=self.limiter.ceiling,
        )

    def _emit(self, *, final: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress(final=final))

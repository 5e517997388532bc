"""The batch engine: every pending item through one :class:`~lmlink.AsyncClient`, at most
``concurrency`` at a time (fewer while the server pushes back), each result appended to the
output as soon as it is known. How a failure is treated (per item, overload, fatal) is in
:mod:`lmlink.batch._outcome`.

When the runner made the client, 429 and 503 are retried here rather than inside the
client, so that every one of them reaches the :class:`~lmlink.batch._limiter.AIMDLimiter`;
the retry budget and the waits are the same policy's. A fatal failure stops the run: no line
is written for it, the in-flight requests are cancelled, and the error is raised.

Cancellation (Ctrl-C) stops the in-flight requests; a result line is written in one
synchronous step between two awaits, so it is never half written.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lmlink import AsyncClient
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
from ._header import describe_changes, make_settings
from ._input import BatchInputError, BatchItem, Problem, items_from_rows, read_items
from ._journal import Journal, JournalState, SettingsChangedError
from ._limiter import AIMDLimiter, Outcome
from ._outcome import error_record, is_fatal, is_overload, success_record
from ._progress import BatchSummary, Progress, ProgressCallback, percentile
from ._tasks import Task

__all__ = ["Items", "Runner", "load_items"]


_TICK = 0.5
_OWN_RETRY = frozenset({429, 503})

Items = str | Path | Iterable[Mapping[str, Any] | BatchItem]


def load_items(
    items: Items, task: Task, template: str | None, system: str | None
) -> list[BatchItem]:
    """The validated items of a file path or an iterable of dicts / :class:`BatchItem`."""
    fmt = task.item_format(template, system)
    if isinstance(items, (str, Path)):
        return read_items(items, fmt)
    if isinstance(items, (bytes, Mapping)):
        raise BatchInputError.of("items", [Problem(0, "items must be a path or a list of dicts")])
    return items_from_rows(enumerate(items, 1), fmt, source="items", unit="item")


class Runner:
    """One batch run. :meth:`prepare` opens the output (and says what is already done),
    :meth:`run` does the rest; :attr:`summary` is kept up to date throughout.

    >>> runner = Runner(items, "out.jsonl", model="qwen3:8b")
    >>> state = runner.prepare()        # ids already done, torn line repaired
    >>> summary = await runner.run()
    """

    def __init__(
        self,
        items: list[BatchItem],
        output: str | Path,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
        concurrency: int = 8,
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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be a positive integer, not {concurrency!r}")
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
        self._redact: Callable[[str], str] = str  # the client's, once there is one
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
        self.limiter = AIMDLimiter(concurrency)
        self.summary = BatchSummary(self.output, total=len(items), concurrency=concurrency)
        self.journal: Journal | None = None
        self._redo: set[str] = set()  # ids whose error lines --retry-errors replaces
        self.pending: list[BatchItem] = []
        self._latencies: list[float] = []
        self._ttfts: list[float] = []
        self._started = 0.0
        self._wake: asyncio.Event | None = None

    # -- setup --------------------------------------------------------------------------

    def prepare(self) -> JournalState:
        """Open and lock the output, repair a torn last line, and find the pending items."""
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
            # Error lines to redo go once the settings are known to match (in run()).
            if self._retry_errors:
                self._redo = {i.id for i in self.items if done.get(i.id)}
            self.pending = [i for i in self.items if i.id not in done or i.id in self._redo]
            self.summary.skipped = len(self.items) - len(self.pending)
            self.summary.retried = len(self._redo)
            self.summary.repaired_bytes = self.journal.state.repaired_bytes
            self.summary.earlier_errors = sum(
                done.get(i.id, False) and i.id not in self._redo for i in self.items
            )
        return self.journal.state

    def close(self) -> None:
        """Release the output file (after a run, or instead of one). A file this run
        created and wrote no result to is removed: a failed start leaves nothing behind."""
        if self.journal is not None:
            self.journal.discard()

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
        if not isinstance(old, dict) or self._allow_changed or not state.done:
            return  # no settings recorded, changes allowed, or no answer to mix with
        new = self.settings(model)
        if not model_known:
            new["model"] = old.get("model")
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
        needs_model = model is None and any("model" not in i.options for i in self.pending)
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
            if self.pending:
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
        queue = deque(self.pending)
        self._wake = asyncio.Event()
        workers = [
            asyncio.ensure_future(self._worker(queue, client, cache, model, retry_here))
            for _ in range(min(self.limiter.ceiling, len(queue)))
        ]
        ticker = asyncio.ensure_future(self._tick())
        self._emit()
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
        finally:
            for task in [*workers, ticker]:
                task.cancel()
            await asyncio.gather(*workers, ticker, return_exceptions=True)

    async def _tick(self) -> None:
        while True:  # cancelled when the workers are done
            await asyncio.sleep(_TICK)
            self._emit()

    async def _worker(
        self,
        queue: deque[BatchItem],
        client: AsyncClient,
        cache: ResponseCache | None,
        model: str | None,
        retry_here: bool,
    ) -> None:
        while queue:
            item = queue.popleft()
            item_model = item.options.get("model", model)
            params = {**self._params, **{k: v for k, v in item.options.items() if k != "model"}}
            key = None
            if cache is not None and client.endpoint is not None and item_model is not None:
                key = cache_key(client.endpoint, item_model, item.messages, params)
                hit = None if key is None else cache.get(key)
                if hit is not None:
                    self._record_cached(item, hit)
                    await asyncio.sleep(0)  # a run of hits must not starve the loop (Ctrl-C)
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
                self._release(ticket, outcome)
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

    async def _acquire(self, deadline: float | None = None) -> int | None:
        """A limiter ticket; None if ``deadline`` passes first."""
        wake = self._wake
        assert wake is not None
        while True:  # bounded: every finished request wakes the waiters again
            ticket = self.limiter.try_start()
            if ticket is not None:
                return ticket
            wake.clear()
            if deadline is None:
                await wake.wait()
                continue
            try:
                await asyncio.wait_for(wake.wait(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                return None

    def _release(self, ticket: int, outcome: Outcome) -> None:
        self.limiter.finish(ticket, outcome)
        if self._wake is not None:
            self._wake.set()

    # -- bookkeeping (each result: one synchronous step, never interrupted) -------------

    def _write(self, record: Mapping[str, Any]) -> None:
        assert self.journal is not None
        self.journal.append(record)

    def _record_ok(self, record: dict[str, Any], resp: ChatResponse) -> None:
        self._write(record)
        s = self.summary
        s.ok += 1
        s.prompt_tokens += resp.prompt_tokens or 0
        s.output_tokens += resp.output_tokens or 0
        if resp.latency_s is not None:
            self._latencies.append(resp.latency_s)
        if resp.ttft_s is not None:
            self._ttfts.append(resp.ttft_s)
        self._emit()

    def _record_cached(self, item: BatchItem, stored: dict[str, Any]) -> None:
        self._write({"id": item.id, **{k: v for k, v in stored.items() if k != "id"}})
        self.summary.ok += 1
        self.summary.cached += 1
        self._emit()

    def _record_error(self, item: BatchItem, exc: LMLinkError) -> None:
        record = error_record(item.id, exc, self._redact)
        self._write(record)
        s = self.summary
        s.failed += 1
        name = type(exc).__name__
        s.errors[name] = s.errors.get(name, 0) + 1
        if name not in s.error_examples:
            s.error_examples[name] = f"{item.id}: {clip(record['error']['message'], 160)}"
        self._emit()

    def _finish_summary(self) -> None:
        s = self.summary
        s.elapsed_s = time.monotonic() - self._started if self._started else 0.0
        s.latency_p50 = percentile(self._latencies, 50)
        s.latency_p95 = percentile(self._latencies, 95)
        s.ttft_p50 = percentile(self._ttfts, 50)
        s.ttft_p95 = percentile(self._ttfts, 95)

    def progress(self, *, final: bool = False) -> Progress:
        """A snapshot of the run so far."""
        s = self.summary
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return Progress(
            total=len(self.pending),
            done=s.ok + s.failed,
            ok=s.ok,
            failed=s.failed,
            cached=s.cached,
            in_flight=self.limiter.in_flight,
            concurrency=self.limiter.limit,
            output_tokens=s.output_tokens,
            elapsed_s=elapsed,
            final=final,
        )

    def _emit(self, *, final: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress(final=final))

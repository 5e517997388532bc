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
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmlink import AsyncClient
from lmlink._config import RetryPolicy, Timeout
from lmlink._errors import (
    APIConnectionError,
    ConfigurationError,
    LMLinkError,
)
from lmlink._models import ChatResponse

from ._cache import ResponseCache, cache_key, check_cache
from ._commit import GroupCommit
from ._doneset import DigestSet, digest
from ._fit import FitGate, short
from ._header import BATCH_OUTPUT, describe_changes, make_settings
from ._input import BatchInputError, BatchItem, Problem, items_from_rows
from ._journal import Journal, JournalState, SettingsChangedError, encode_record
from ._limiter import AUTO_CEILING
from ._outcome import error_record, is_fatal, success_record
from ._pool import EndpointPool, client_policy, endpoint_list, unreachable
from ._progress import BatchSummary, Progress, ProgressCallback
from ._shard import Shard, in_shard
from ._source import ItemSource, scan_items
from ._tally import Mark, Tally
from ._tasks import Task, same_extract_question

__all__ = ["Concurrency", "Items", "Runner", "ceiling_of", "load_items"]


_TICK = 0.5

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

    #: The kind of output this runner writes (its header says it; the other kind is refused).
    kind = BATCH_OUTPUT

    def __init__(
        self,
        items: ItemSource | list[BatchItem],
        output: str | Path,
        *,
        endpoint: str | Sequence[str] | None = None,
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
        shard: Shard | None = None,
    ) -> None:
        ceiling = ceiling_of(concurrency)
        if client is not None and not isinstance(client, AsyncClient):
            raise ConfigurationError("client= must be an lmlink.AsyncClient")
        if client is not None and (endpoint is not None or api_key is not None):
            raise ConfigurationError("give client= or endpoint=/api_key=, not both")
        self.items = items
        self.shard = shard
        self.output = Path(output)
        self._urls = endpoint_list(endpoint if endpoint is not None else _listed_in_env())
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
        self._per_endpoint = None if auto else ceiling
        self._ceiling = ceiling
        self.pool: EndpointPool | None = None  # one client and limit per endpoint, by run()
        self.summary = BatchSummary(self.output, total=len(items), concurrency=ceiling)
        self.journal: Journal | None = None
        self._redo = DigestSet()  # ids whose error lines --retry-errors replaces
        self.pending_count = 0
        self._commit: GroupCommit | None = None
        self.tally = Tally(self.summary)
        self._started = 0.0
        self._workers: set[asyncio.Future[Any]] = set()
        self._work: Iterator[BatchItem] = iter(())
        self._job: tuple[EndpointPool, ResponseCache | None, str | None, str | None] | None = None
        self._exhausted = False
        self._ended: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._fit: FitGate | None = None  # prompts against the context window, by _drive

    # -- setup --------------------------------------------------------------------------

    def _ids(self) -> DigestSet:
        items = self.items
        if isinstance(items, ItemSource):
            ids = items.ids
        else:
            ids = DigestSet.of(digest(i.id) for i in items)
        if self.shard is None:
            return ids
        return DigestSet.of(d for d in ids if in_shard(d, self.shard))

    def prepare(self) -> JournalState:
        """Open and lock the output, repair a torn last line, and count the pending items."""
        if self.journal is None:
            if self._cache_path is not None:
                check_cache(self._cache_path)  # before the output is touched
            # The model, when not given, is known once the server is asked; run() checks
            # it then, before anything is sent.
            given = self._model or (self._client.model if self._client else None)
            self.journal = Journal.open(
                self.output,
                adopt=self._allow_changed,
                kind=self.kind,
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
            self.summary.total = len(ids)
            self.pending_count = len(ids) - skipped + len(self._redo)
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
        shard = self.shard
        if not len(done) and shard is None:
            yield from self.items
            return
        for item in self.items:
            key = digest(item.id)
            if shard is not None and not in_shard(key, shard):
                continue
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
        """The settings record of this run (see :mod:`lmlink.batch._header`); a sharded
        run adds ``"shard": "K/N"`` (an output holds one shard's answers)."""
        settings = make_settings(
            task=self.task.name,
            instructions=self.task.instructions,
            template=self._template,
            system=self._system,
            model=model,
            params=self._params,
        )
        if self.shard is not None and self.shard[1] > 1:  # 1/1 is every id: no shard
            settings["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return settings

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

    def _make_client(self, url: str | None) -> AsyncClient:
        # 429 and 503 are retried by the runner, so the limiter hears of every one.
        policy = client_policy(self._retry)
        return AsyncClient(
            endpoint=url,
            model=self._model,
            api_key=self._api_key,
            timeout=self._timeout,
            retry=policy,
            max_connections=max(self._ceiling, 1),
        )

    async def _resolve(self, clients: Sequence[AsyncClient]) -> str | None:
        """The run's model; asks a server (which also finds a local one, if discovery is
        on) when no endpoint or no model is set: the first one that can be reached."""
        first = clients[0]
        model = self._model or first.model
        needs_model = model is None and any("model" not in i.options for i in self.pending())
        if first.endpoint is None or needs_model:
            found = None
            for n, client in enumerate(clients):
                try:
                    found = await client.models()
                    break
                except APIConnectionError as exc:
                    if n == len(clients) - 1 or not unreachable(exc):
                        raise
            if model is None and needs_model:
                if not found:
                    raise ConfigurationError("no model given and the server lists none")
                model = found[0].id
        self.summary.model = model
        self.summary.endpoint = ", ".join(c.endpoint for c in clients if c.endpoint) or None
        return model

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> BatchSummary:
        """Run every pending item; return the summary. Raises the fatal error, if any
        (the summary still says what was done), and CancelledError when cancelled."""
        self.prepare()
        self._started = time.monotonic()
        owned = self._client is None
        pool: EndpointPool | None = None
        cache: ResponseCache | None = None
        try:
            if self.pending_count:
                if self._client is not None:
                    clients = [self._client]
                else:
                    clients = [self._make_client(url) for url in self._urls]
                self.pool = pool = EndpointPool(
                    clients,
                    ceiling=self._per_endpoint,
                    retry=self._retry,
                    retry_here=owned,
                    total=self._total,
                    on_release=self._more_workers,
                )
                self._redact = clients[0].redact
                cache = ResponseCache(self._cache_path) if self._cache_path is not None else None
                model = await self._resolve(clients)
                self._check_settings(model, model_known=True)
                assert self.journal is not None
                self.journal.drop_errors(self._redo)
                self.journal.write_header(self.settings(model))
                await self._drive(pool, cache, model)
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
                    cache.discard_if_unused()
                if pool is not None:
                    await pool.aclose(clients=owned)
                self._emit(final=True)
        return self.summary

    async def _drive(
        self, pool: EndpointPool, cache: ResponseCache | None, model: str | None
    ) -> None:
        assert self.journal is not None
        urls = [e.client.endpoint for e in pool.endpoints]
        # The cache key names the servers: one URL, or all of them when they share the work.
        where = ",".join(sorted(u for u in urls if u)) if all(urls) else None
        self._commit = commit = GroupCommit(self.journal, self._committed)
        self._ended = ended = asyncio.Event()
        self._work = self.pending()
        self._job = (pool, cache, model, where)
        # Items of the run's model are checked against its window (asked once, when needed).
        # With several servers the largest window decides (each still answers for itself).
        clients = [e.client for e in pool.endpoints]
        self._fit = FitGate(clients, model) if model is not None else None
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
        assert self.pool is not None
        want = min(self.pool.ceiling, 2 * self.pool.limit + 2)
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
        pool, cache, model, where = self._job
        hits = 0
        while True:  # bounded: ends when the input does
            item = next(self._work, None)
            if item is None:
                self._exhausted = True
                return
            item_model = item.options.get("model", model)
            params = {**self._params, **{k: v for k, v in item.options.items() if k != "model"}}
            key = None
            if cache is not None and where is not None and item_model is not None:
                key = cache_key(where, item_model, item.messages, params)
                hit = None if key is None else cache.get(key)
                if hit is not None:
                    self._record_cached(item, hit)
                    hits += 1
                    if hits % 16 == 0:
                        await asyncio.sleep(0)  # a run of hits must not starve the loop
                    await self._commit.room()
                    continue
            if self._fit is not None and item_model == model and not short(item.messages):
                refused = await self._fit.refusal(item.messages)
                if refused is not None:  # its prompt alone fills the window: not sent
                    self._record_error(item, refused)
                    await self._commit.room()
                    continue
            # Streams give a real TTFT; structured output is re-asked only on plain requests.
            stream = self._stream if self._stream is not None else "response_format" not in params
            result = await pool.ask(
                item.messages,
                model=item_model,
                params=params,
                stream=stream,
                fatal=_fatal_for(item),
                label=item.id,
            )
            if isinstance(result, LMLinkError):
                self._record_error(item, result)
            else:
                record = success_record(item.id, result, self.task, self._redact)
                self._record_ok(record, result)
                if cache is not None and key is not None:
                    cache.put(key, {k: v for k, v in record.items() if k != "id"})

    def _more_workers(self) -> None:
        """After a request ends: more workers if the limit grew."""
        pool = self.pool
        if pool is not None and len(self._workers) < 2 * pool.limit + 2 and not self._exhausted:
            self._spawn()

    # -- bookkeeping: staged at once, counted once on disk ------------------------------

    def _stage(self, record: Mapping[str, Any], mark: Mark) -> None:
        assert self._commit is not None
        self._commit.add(encode_record(record), mark)

    def _record_ok(self, record: dict[str, Any], resp: ChatResponse) -> None:
        self._stage(record, Tally.answered(resp))

    def _record_cached(self, item: BatchItem, stored: dict[str, Any]) -> None:
        self._stage({"id": item.id, **{k: v for k, v in stored.items() if k != "id"}}, Tally.hit())

    def _record_error(self, item: BatchItem, exc: LMLinkError) -> None:
        record = error_record(item.id, exc, self._redact)
        self._stage(record, Tally.failed(item.id, exc, record["error"]["message"]))

    def _committed(self, marks: list[Mark]) -> None:
        """Count the results whose lines the last fsync covered."""
        self.tally.count(marks)
        self._emit()

    def _finish_summary(self) -> None:
        s = self.summary
        s.elapsed_s = time.monotonic() - self._started if self._started else 0.0
        self.tally.finish()
        pool = self.pool
        if self._commit is not None and pool is not None:
            limiters = [e.limiter for e in pool.endpoints]
            s.concurrency_range = (sum(x.low for x in limiters), sum(x.high for x in limiters))
            s.concurrency_settled = sum(x.cruise for x in limiters)
            s.concurrency = pool.ceiling
            if len(limiters) > 1:
                s.endpoints = pool.shares()
            s.server_waits = sum(x.pauses for x in limiters)
            s.server_wait_max_s = max(x.longest_pause for x in limiters)

    def progress(self, *, final: bool = False) -> Progress:
        """A snapshot of the run so far."""
        s = self.summary
        pool = self.pool
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return Progress(
            total=self.pending_count,
            done=s.ok + s.failed,
            ok=s.ok,
            failed=s.failed,
            cached=s.cached,
            in_flight=pool.in_flight if pool is not None else 0,
            concurrency=pool.limit if pool is not None else 0,
            output_tokens=s.output_tokens,
            elapsed_s=elapsed,
            final=final,
            ceiling=pool.ceiling if pool is not None else self._ceiling,
            endpoints=pool.shares() if pool is not None and len(pool.endpoints) > 1 else (),
            waiting_s=_held_back(pool),
            generates=self.kind == BATCH_OUTPUT,
        )

    def _emit(self, *, final: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress(final=final))


def _held_back(pool: EndpointPool | None) -> float:
    """Seconds until a server takes new requests again, when every live one is paused by
    a Retry-After (0 when any of them takes requests now)."""
    if pool is None:
        return 0.0
    now = time.monotonic()
    waits = [e.limiter.wait_s(now) for e in pool.endpoints if e.up]
    return min(waits) if waits else 0.0


def _fatal_for(item: BatchItem) -> Callable[[LMLinkError], bool]:
    """Whether an error of ``item`` is one every item would share (see :mod:`._outcome`)."""
    return lambda exc: is_fatal(exc, item)


def _listed_in_env() -> str | None:
    """``LMLINK_ENDPOINT`` when it lists several URLs (comma-separated); one URL is left to
    the client, which reads it (and ``OPENAI_BASE_URL``) itself."""
    value = os.environ.get("LMLINK_ENDPOINT", "")
    return value if "," in value else None

"""Ray Data: every row of a dataset through a chat model, for data that lives beyond one
machine (``pip install 'lmlink[ray]'``).

>>> import ray, lmlink.ray
>>> ds = ray.data.read_parquet("s3://bucket/tickets/")
>>> out = lmlink.ray.map_chat(ds, endpoint=["http://gpu1:8000/v1", "http://gpu2:8000/v1"],
...                           model="qwen3-8b", prompt_column="text", max_tokens=200)
>>> out.write_parquet("s3://bucket/answers/")

The rows go through a pool of Ray actors; each holds one :class:`~lmlink.AsyncClient` per
endpoint with its own adaptive limit on requests in flight and sends a whole batch of rows
at once (:mod:`lmlink.batch._pool`). ``import lmlink`` never imports this module, nor Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from lmlink._config import Timeout
from lmlink._errors import ConfigurationError, LMLinkError
from lmlink.batch._input import BatchInputError, BatchItem, items_from_rows
from lmlink.batch._limiter import AUTO_CEILING
from lmlink.batch._outcome import error_record, is_fatal, success_record
from lmlink.batch._pool import EndpointPool, client_policy, endpoint_list
from lmlink.batch._tasks import Task

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = ["COLUMNS", "map_chat"]

#: The columns :func:`map_chat` adds to every row.
COLUMNS = (
    "content",
    "reasoning",
    "parsed",
    "finish_reason",
    "prompt_tokens",
    "output_tokens",
    "latency_s",
    "error",
)
_INTS = frozenset({"prompt_tokens", "output_tokens"})
_BATCH_ROWS_PER_SLOT = 4
_AUTO_SLOTS = 256
_MAX_BATCH = 4096


def map_chat(
    ds: ray.data.Dataset,
    *,
    endpoint: str | Sequence[str],
    model: str | None,
    prompt_column: str = "prompt",
    messages_column: str | None = None,
    task: Task | None = None,
    concurrency: int | None = None,
    api_key: str | None = None,
    timeout: float | Timeout = 120.0,
    **params: Any,
) -> ray.data.Dataset:
    """``ds`` with the answer to each row in the columns of :data:`COLUMNS`.

    Each row is asked its ``prompt_column`` (a string) or, if ``messages_column`` is
    given, that column's chat messages (a list of ``{"role", "content"}``). ``task`` is a
    preset of :class:`lmlink.batch.Task` (classify, summarize, extract; they read
    ``prompt_column``). ``endpoint`` is one URL, a comma-separated list or a list of URLs;
    ``concurrency`` caps the requests in flight to each endpoint, shared by the actors (one
    per endpoint); by default each actor finds the limit by itself (the adaptive limiter of
    ``lmlink batch``). ``api_key`` and ``timeout`` are the clients' (as for
    :class:`~lmlink.AsyncClient`). Other keywords (``max_tokens=``, ``temperature=``,
    ``response_format=``...) go into every request.

    The added columns: ``content``, ``reasoning``, ``finish_reason`` (strings or null),
    ``parsed`` (the structured answer as JSON text, or null), ``prompt_tokens``,
    ``output_tokens`` (integers or null), ``latency_s`` (seconds), and ``error``: null, or
    ``"TypeName: message"`` when the row failed (its other columns are then null). A row
    keeps its own columns and gets its own answer; within a batch the rows keep their order
    (across blocks Ray's ``DataContext.execution_options.preserve_order`` decides). A
    failure every row would share (no server reachable, a wrong key, an unknown model)
    fails the job instead of filling the column.

    Lazy, like every Ray Data transform: nothing is sent until the dataset is consumed.

    >>> out = lmlink.ray.map_chat(ds, endpoint="http://127.0.0.1:8000/v1", model="m",
    ...                           task=lmlink.batch.Task.classify(["spam", "ham"]))
    """
    import ray.data

    urls = endpoint_list(endpoint)
    if urls == [None]:
        raise ConfigurationError("map_chat needs endpoint=: a URL or a list of URLs")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigurationError(f"concurrency must be a positive integer, not {concurrency!r}")
    task = task or Task()
    if messages_column is not None and not task.allow_messages:
        raise ConfigurationError(
            f"the {task.name} task reads text: give prompt_column=, not messages_column="
        )
    actors = len(urls)
    ceiling = None if concurrency is None else math.ceil(concurrency / actors)
    config = _Config(
        endpoints=[u for u in urls if u is not None],
        model=model,
        api_key=api_key,
        timeout=timeout,
        ceiling=ceiling,
        prompt_column=prompt_column,
        messages_column=messages_column,
        task=task,
        params=dict(params),
    )
    # Rows in flight per actor are at most a batch: enough for the limit to find the knee.
    slots = _AUTO_SLOTS if ceiling is None else _BATCH_ROWS_PER_SLOT * ceiling
    batch_size = min(_MAX_BATCH, slots * len(urls))
    return ds.map_batches(
        _ChatActor,
        fn_constructor_kwargs={"config": config},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
    )


@dataclass(frozen=True)
class _Config:
    """What every actor needs; plain data, so Ray can ship it."""

    endpoints: list[str]
    model: str | None
    api_key: str | None
    timeout: float | Timeout
    ceiling: int | None
    prompt_column: str
    messages_column: str | None
    task: Task
    params: dict[str, Any] = field(default_factory=dict)


class _ChatActor:
    """One Ray actor: an event loop in a thread of its own, holding the clients between
    batches (their connections stay open, their limits stay learnt)."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self._fmt = config.task.item_format()
        self._params = {**config.task.params, **config.params}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lmlink-ray", daemon=True
        )
        self._thread.start()
        self._pool: EndpointPool | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = self.config.messages_column or self.config.prompt_column
        if column not in batch.column_names:
            raise ConfigurationError(
                f"the dataset has no column {column!r} (columns: {', '.join(batch.column_names)})"
            )
        values = batch.column(column).to_pylist()
        future = asyncio.run_coroutine_threadsafe(self._answer(values), self._loop)
        rows = future.result()
        return _with_columns(batch, rows)

    def __del__(self) -> None:
        # Ray ends actors with their process; this is for an actor dropped while it lives.
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        with contextlib.suppress(Exception):
            if self._pool is not None:
                asyncio.run_coroutine_threadsafe(self._pool.aclose(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)

    async def _answer(self, values: list[Any]) -> list[dict[str, Any]]:
        if self._pool is None:
            self._pool = self._make_pool()
        pool = self._pool
        return list(await asyncio.gather(*(self._one(pool, v) for v in values)))

    def _make_pool(self) -> EndpointPool:
        from lmlink import AsyncClient, RetryPolicy

        c = self.config
        retry = client_policy(RetryPolicy())
        clients = [
            AsyncClient(
                endpoint=url,
                model=c.model,
                api_key=c.api_key,
                timeout=c.timeout,
                max_connections=c.ceiling or AUTO_CEILING,
                retry=retry,
            )
            for url in c.endpoints
        ]
        return EndpointPool(clients, ceiling=c.ceiling)

    async def _one(self, pool: EndpointPool, value: Any) -> dict[str, Any]:
        item = self._item(value)
        if isinstance(item, str):
            return {"error": item}
        redact = pool.endpoints[0].client.redact
        result = await pool.ask(
            item.messages,
            model=self.config.model,
            params=self._params,
            fatal=lambda exc: is_fatal(exc, item),
        )
        if isinstance(result, LMLinkError):
            err = error_record(item.id, result, redact)["error"]
            return {"error": f"{err['type']}: {err['message']}"}
        record = success_record(item.id, result, self.config.task, redact)
        parsed = record["parsed"]
        record["parsed"] = None if parsed is None else orjson.dumps(parsed).decode()
        return record

    def _item(self, value: Any) -> BatchItem | str:
        """The messages for one row's value, or its error text."""
        key = "messages" if self.config.messages_column else "prompt"
        if isinstance(value, list):  # Arrow gives structs as dicts, with nulls for gaps
            value = [
                {k: v for k, v in m.items() if v is not None} if isinstance(m, Mapping) else m
                for m in value
            ]
        row = {"id": "row", key: value} if value is not None else {"id": "row"}
        try:
            [item] = items_from_rows([(1, row)], self._fmt, source="row", unit="row")
        except BatchInputError as exc:
            message = "; ".join(p.message for p in exc.problems)
            return f"BatchInputError: {message}"
        return item


def _with_columns(batch: pa.Table, rows: list[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa

    for name in COLUMNS:
        kind = pa.int64() if name in _INTS else pa.float64() if name == "latency_s" else pa.string()
        array = pa.array([row.get(name) for row in rows], type=kind)
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, array)
        else:
            batch = batch.append_column(name, array)
    return batch

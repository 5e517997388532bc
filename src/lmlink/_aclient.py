"""The asyncio I/O shell: :class:`AsyncClient`, and :func:`adiscover`.

Written line for line in parallel with ``_client.py`` (the blocking twin), so that the two
diff cleanly; all decisions live in the shared pure core.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _observe
from ._astreaming import AsyncChatStream
from ._client import discovery_off, ports_to_probe, probe_timeouts, url_host
from ._config import Timeout
from ._core import Attempts, Call, ClientCore
from ._discovery import Answer, ServerInfo
from ._drivers import (
    PROBE_TIMEOUT,
    Sleep,
    Steps,
    ToolLoop,
    probe_steps,
    server_info_steps,
    wait_ready_steps,
)
from ._errors import LMLinkError
from ._http import AsyncHTTPResponse, AsyncTransport
from ._http.aio import LoopPools
from ._http.common import Timeouts
from ._models import ChatResponse, ModelInfo
from ._streaming import Delta
from ._tokens import Ask, Reply, ask_call, counting, raw_answer, windowing
from ._wire import MessagesInput

if TYPE_CHECKING:
    from ._embed import Embeddings
    from ._http.proxy import AsyncProxyTransport

__all__ = ["AsyncClient", "adiscover"]


T = TypeVar("T")


class AsyncClient(ClientCore):
    """The asyncio twin of :class:`Client`; same constructor, awaitable methods.

    >>> async with lmlink.AsyncClient(model="qwen3:8b") as client:
    ...     resp = await client.chat("Say hi")

    One client may serve several event loops (in several threads, or one after another):
    each loop gets a connection pool of its own (up to ``max_connections`` each). Its
    ``event_hooks`` may be async functions too: what they return is awaited.
    """

    _pools: LoopPools
    _proxy_transport: AsyncProxyTransport | None = None

    def _setup(self) -> None:
        settings = self._transport_settings()
        if self._proxied:
            from ._http.proxy import AsyncProxyTransport

            self._proxy_transport = AsyncProxyTransport(
                proxy=self._proxy, trust_env=self._trust_env, **settings
            )
        self._pools = LoopPools(redact=self.redact, **settings)

    @property
    def _transport(self) -> AsyncTransport:
        """The running event loop's pool (or the proxy transport)."""
        if self._proxy_transport is not None:
            return self._proxy_transport
        return self._pools.current()

    async def chat(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        **extra: Any,
    ) -> ChatResponse:
        """One chat completion, not streamed (see :meth:`Client.chat`)."""
        await self._ensure_endpoint()
        plan, options = self._plan(
            messages,
            model,
            stream=False,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            tools=tools,
            tool_choice=tool_choice,
            reasoning=reasoning,
            extra=extra,
        )
        run = self._attempts(self._chat_call(plan, options), plan)
        if _observe.observers:  # instrumented (lmlink.otel): the one test on the hot path
            return await _observe.acall(
                _observe.chat_operation(plan, run.call.url), self._chat, run
            )
        return await self._chat(run)

    async def _chat(self, run: Attempts) -> ChatResponse:
        while True:  # bounded: by the retry budget, the plan's fallbacks and re-asks
            try:
                resp = await self._send(run.call, self._read_chat)
            except LMLinkError as exc:
                await asyncio.sleep(run.failed(exc))
                continue
            if run.accept(resp):
                return resp

    def stream(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        **extra: Any,
    ) -> AsyncChatStream:
        """A streamed chat, as an async context manager (see :class:`AsyncChatStream`).
        With no endpoint configured, discovery runs when the stream is entered (and the
        call is planned after it, so that it can use the model found)."""

        def plan() -> Any:
            return self._plan(
                messages,
                model,
                stream=True,
                temperature=temperature,
                max_tokens=max_tokens,
                response_format=response_format,
                tools=tools,
                tool_choice=tool_choice,
                reasoning=reasoning,
                extra=extra,
            )

        later = self._endpoint is None and not discovery_off()
        return AsyncChatStream(
            self._stream_context(),
            plan if later else plan(),
            on_delta,
            on_reasoning,
            send=self._open,
            prepare=self._ensure_endpoint,
        )

    async def chat_stream(
        self,
        messages: MessagesInput,
        on_delta: Delta | None = None,
        *,
        on_reasoning: Delta | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Stream a chat, calling ``on_delta(text)`` per content delta; return the aggregate."""
        stream = self.stream(messages, on_delta=on_delta, on_reasoning=on_reasoning, **kwargs)
        async with stream as s:
            return await s.until_done()

    async def run_tools(
        self,
        messages: MessagesInput,
        tools: Sequence[Any],
        *,
        max_steps: int = 8,
        **kwargs: Any,
    ) -> ChatResponse:
        """The async twin of :meth:`Client.run_tools`; tools may be async functions."""
        loop = ToolLoop(
            messages, tools, max_steps, blocking=False, timeout=self.timeout, kwargs=kwargs
        )
        while loop.turn():
            resp = await self.chat(loop.history, tools=loop.definitions, **loop.kwargs())
            for call, run in loop.calls(resp):
                try:
                    result = run()
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as exc:
                    result = loop.failure(exc)
                loop.record(call, result)
        return loop.answer

    async def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``)."""
        await self._ensure_endpoint()
        run = self._attempts(self._get_call("/models"))
        while True:  # bounded: by the retry budget
            try:
                return await self._send(run.call, self._read_models)
            except LMLinkError as exc:
                await asyncio.sleep(run.failed(exc))

    # -- embeddings ---------------------------------------------------------------------

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        **extra: Any,
    ) -> Embeddings:
        """The embedding vectors of ``inputs`` (see :meth:`Client.embed`)."""
        from ._embed import embed_call

        await self._ensure_endpoint()
        call, count = embed_call(self, inputs, model, dimensions, extra)
        run = self._attempts(call)
        if _observe.observers:  # instrumented (lmlink.otel)
            op = _observe.embeddings_operation(call.url, model or self.model, dimensions, extra)
            return await _observe.acall(op, self._embed, run, count)
        return await self._embed(run, count)

    async def _embed(self, run: Attempts, count: int) -> Embeddings:
        from ._embed import embed_answer

        while True:  # bounded: by the retry budget
            try:
                async with await self._open(run.call) as resp:
                    body = await resp.read(self._max_body)
                    return embed_answer(self, run.call, resp.status, resp.headers, body, count)
            except LMLinkError as exc:
                await asyncio.sleep(run.failed(exc))

    async def server_info(self) -> ServerInfo:
        """Which server this is (kind, version, models) and what calls learned about it."""
        await self._ensure_endpoint()
        return self._learn(await self._drive(server_info_steps(self._url(""))))

    async def wait_ready(self, timeout: float = 300.0) -> ServerInfo:
        """Wait until the server is ready (see :meth:`Client.wait_ready`)."""
        await self._ensure_endpoint()
        return self._learn(await self._drive(wait_ready_steps(self._url(""), timeout)))

    # -- token counts and the context window (drivers in ``_tokens``) -----------------

    async def count_tokens(self, what: str | MessagesInput, *, model: str | None = None) -> int:
        """How many tokens the server's tokenizer makes of ``what`` (see
        :meth:`Client.count_tokens`)."""
        await self._ensure_endpoint()
        return await self._converse(counting(self, what, model))

    async def context_length(self, model: str | None = None) -> int | None:
        """The model's context window in tokens, or None (see :meth:`Client.context_length`)."""
        await self._ensure_endpoint()
        return await self._converse(windowing(self, model))

    async def _converse(self, steps: Generator[Ask, Reply, T]) -> T:
        """Run a driver of ``_tokens``: its requests one after another."""
        reply: Any = None
        while True:  # bounded: by the driver
            try:
                ask = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            run = self._attempts(ask_call(self, ask))
            while True:  # bounded: by the retry budget
                try:
                    reply = await self._send(run.call, self._read_raw)
                    break
                except LMLinkError as exc:
                    await asyncio.sleep(run.failed(exc))

    async def _read_raw(self, call: Call, resp: AsyncHTTPResponse) -> Reply:
        return raw_answer(self, resp.status, resp.headers, await resp.read(self._max_body))

    async def _drive(self, steps: Steps[T]) -> T:
        """Run a driver of ``_drivers``: each round of GETs at the same time, its sleeps."""
        answer: Any = None
        while True:  # bounded: by the driver
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                answer = None
            else:
                answer = tuple(await asyncio.gather(*(self._get(g.url, g.timeout) for g in step)))

    async def _get(self, url: str, timeout: float = PROBE_TIMEOUT) -> Answer:
        """One GET, no retries: (status, headers, body), or None if nothing answered."""
        try:
            if self._hooks is not None:
                resp = await self._hooked(
                    "GET", url, self._get_headers, None, probe_timeouts(timeout)
                )
            else:
                resp = await self._transport.request(
                    "GET", url, self._get_headers, None, probe_timeouts(timeout)
                )
            async with resp:
                self._answered = True
                return resp.status, resp.headers, await resp.read(1 << 20)
        except LMLinkError:
            return None

    async def _ensure_endpoint(self) -> None:
        if self._endpoint is None and not discovery_off():
            self._use_discovered(await adiscover())

    async def _open(self, call: Call) -> AsyncHTTPResponse:
        """Send ``call``; return once the response head has arrived."""
        if self._hooks is not None:
            return await self._hooked(
                call.method, call.url, call.headers, call.body, call.timeouts()
            )
        resp = await self._transport.request(
            call.method, call.url, call.headers, call.body, call.timeouts()
        )
        self._answered = True
        return resp

    async def _hooked(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> AsyncHTTPResponse:
        """One request with the event hooks around it (see ``_hooks``)."""
        hooks = self._hooks
        assert hooks is not None
        request = await hooks.asending(method, url, headers, body)
        sent = time.monotonic()
        resp = await self._transport.request(method, url, headers, body, timeouts)
        self._answered = True
        try:
            await hooks.aanswered(request, resp.status, resp.headers, time.monotonic() - sent)
        except BaseException:
            await resp.aclose()
            raise
        return resp

    async def _send(self, call: Call, read: Callable[[Call, AsyncHTTPResponse], Awaitable[T]]) -> T:
        """One attempt: send ``call``, read the answer with ``read``."""
        async with await self._open(call) as resp:
            return await read(call, resp)

    async def _read_chat(self, call: Call, resp: AsyncHTTPResponse) -> ChatResponse:
        ttft = time.monotonic() - call.started
        body = await resp.read(self._max_body)
        return self._chat_answer(call, resp.status, resp.headers, body, ttft)

    async def _read_models(self, call: Call, resp: AsyncHTTPResponse) -> list[ModelInfo]:
        return self._models_answer(resp.status, resp.headers, await resp.read(self._max_body))

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._proxy_transport is not None:
            await self._proxy_transport.aclose()
        await self._pools.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def adiscover(
    ports: Sequence[int] | None = None, host: str = "127.0.0.1", timeout: float = 0.5
) -> list[ServerInfo]:
    """The async twin of :func:`discover`."""

    async def probe(port: int) -> ServerInfo | None:
        url = f"http://{url_host(host)}:{port}/v1"
        async with AsyncClient(endpoint=url, timeout=Timeout(timeout, timeout)) as c:
            return await c._drive(probe_steps(url, timeout))

    found = await asyncio.gather(*(probe(port) for port in ports_to_probe(ports)))
    return [f for f in found if f is not None]

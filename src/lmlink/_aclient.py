"""The asyncio I/O shell: :class:`AsyncClient`, and :func:`adiscover`.

Written line for line in parallel with ``_client.py`` (the blocking twin), so that the two
diff cleanly; all decisions live in the shared pure core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ._astreaming import AsyncChatStream
from ._atransport import AsyncResponse, AsyncTransport
from ._base import BaseClient, Call
from ._client import discovery_off, ports_to_probe, probe_timeouts, probe_wait, url_host
from ._config import Timeout
from ._discovery import Answer, Probe, ServerInfo, version_from, version_probe
from ._errors import APIStatusError, ConfigurationError, LMLinkError
from ._models import ChatResponse, ModelInfo
from ._retry import RetryState
from ._streaming import Delta, retry_log
from ._wire import MessagesInput, decode_models, normalize_messages

__all__ = ["AsyncClient", "adiscover"]


T = TypeVar("T")

_PROBE_TIMEOUT = 1.0


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`Client`; same constructor, awaitable methods.

    >>> async with lmlink.AsyncClient(model="qwen3:8b") as client:
    ...     resp = await client.chat("Say hi")
    """

    _transport: AsyncTransport

    def _setup(self) -> None:
        self._transport = AsyncTransport(
            verify=self._verify,
            max_connections=self._max_connections,
            max_body=self._max_body,
            redact=self.redact,
        )

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
        """One chat completion, not streamed. Extra keywords go into the request body."""
        await self._ensure_endpoint()
        plan = self._plan(
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
        started = time.monotonic()
        while True:  # bounded: the plan runs out of fallbacks and re-asks
            try:
                resp = await self._send(self._call(plan, started), self._read_chat)
            except APIStatusError as exc:
                if plan.adapt(exc):
                    continue
                raise
            if plan.accept(resp):
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
        With no endpoint configured, discovery runs when the stream is entered."""
        plan = self._plan(
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
        return AsyncChatStream(self, plan, on_delta, on_reasoning)

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
        import inspect  # loaded by _tools anyway; kept off the import path

        from ._tools import ToolSet

        if max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, not {max_steps}")
        toolset = ToolSet(tools)
        history = list(normalize_messages(messages))
        for _ in range(max_steps):
            resp = await self.chat(history, tools=toolset.definitions, **kwargs)
            if not resp.tool_calls:
                return resp
            history.append(resp.to_message().to_dict())
            for call in resp.tool_calls:
                prepared = toolset.prepare(call)
                if isinstance(prepared, str):
                    result: Any = prepared
                else:
                    fn, args = prepared
                    try:
                        result = fn(**args)
                        if inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        result = f"error: {type(exc).__name__}: {exc}"
                history.append(ToolSet.result_message(call, result))
        return resp

    async def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``)."""
        await self._ensure_endpoint()
        return await self._send(self._prepare_get("/models"), self._read_models)

    async def server_info(self) -> ServerInfo:
        """Which server this is (kind, version, models) and what calls learned about it."""
        await self._ensure_endpoint()
        probe = Probe(self._url(""))
        models, root = await asyncio.gather(self._get(probe.models_url), self._get(probe.root_url))
        info = probe.info(models, root)
        where = version_probe(info.kind, probe.endpoint)
        if where is not None:
            info.version = version_from(await self._get(where[0]), where[1])
        return self._learn(info)

    async def wait_ready(self, timeout: float = 300.0) -> ServerInfo:
        """Wait until the server is ready (see :meth:`Client.wait_ready`)."""
        await self._ensure_endpoint()
        deadline = time.monotonic() + timeout
        wait = 0.1
        while True:  # bounded: by the deadline
            info = await self._ready_info(deadline)
            if info is not None:
                return info
            if time.monotonic() + wait > deadline:
                raise self._not_ready(timeout)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)

    async def _ready_info(self, deadline: float) -> ServerInfo | None:
        probe = Probe(self._url(""))
        models = await self._get(probe.models_url, probe_wait(deadline))
        if models is None or models[0] != 200:
            return None  # no need to ask /health
        health = await self._get(probe.health_url, probe_wait(deadline))
        if not probe.ready(models, health):
            return None
        return self._learn(probe.info(models, None))

    async def _get(self, url: str, timeout: float = _PROBE_TIMEOUT) -> Answer:
        """One GET, no retries: (status, headers, body), or None if nothing answered."""
        try:
            async with await self._transport.request(
                "GET", url, self._get_headers, None, probe_timeouts(timeout)
            ) as resp:
                return resp.status, resp.headers, await resp.read(1 << 20)
        except LMLinkError:
            return None

    async def _ensure_endpoint(self) -> None:
        if self._endpoint is None and not discovery_off():
            found = await adiscover()
            if found:
                self._use_discovered(found[0])

    async def _send(self, call: Call, read: Callable[[Call, AsyncResponse], Awaitable[T]]) -> T:
        deadline = self._deadline(call.started)
        state: RetryState | None = None
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            try:
                resp = await self._transport.request(
                    call.method, call.url, call.headers, call.body, self._timeouts(deadline)
                )
                async with resp:
                    return await read(call, resp)
            except LMLinkError as exc:
                self._scrub(exc)
                state = state or self._retry_state(deadline)
                delay = state.delay_for(exc)
                retry_log(state, exc, delay)
                await asyncio.sleep(delay)

    async def _read_chat(self, call: Call, resp: AsyncResponse) -> ChatResponse:
        ttft = time.monotonic() - call.started
        body = await resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return self._finish_chat(call, body, ttft)

    async def _read_models(self, call: Call, resp: AsyncResponse) -> list[ModelInfo]:
        body = await resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return decode_models(body, self.redact)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()

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
        async with AsyncClient(
            endpoint=f"http://{url_host(host)}:{port}/v1", timeout=Timeout(timeout, timeout)
        ) as c:
            p = Probe(c._url(""))
            models = await c._get(p.models_url, timeout)
            if models is None:
                return None
            return p.info(models, await c._get(p.root_url, timeout))

    found = await asyncio.gather(*(probe(port) for port in ports_to_probe(ports)))
    return [f for f in found if f is not None and f.models]

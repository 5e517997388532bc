"""The two I/O shells: :class:`Client` (blocking sockets) and :class:`AsyncClient` (asyncio).

Everything that decides anything lives in the pure core (``_base``, ``_wire``, ``_stream``,
``_retry``); these classes only send, read and sleep. The sync and async halves are
written line for line in parallel so that they diff cleanly: change one, change both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ._atransport import AsyncResponse, AsyncTransport
from ._base import BaseClient, Call
from ._errors import LMLinkError, stream_variant
from ._models import ChatResponse, ModelInfo
from ._retry import RetryState
from ._sse import SSEDecoder
from ._stream import StreamAccumulator
from ._transport import Response, SyncTransport
from ._wire import MessagesInput, decode_models

__all__ = ["AsyncChatStream", "AsyncClient", "ChatStream", "Client"]

log = logging.getLogger("lmlink")

Delta = Callable[[str], Any]
T = TypeVar("T")


def _broken(exc: LMLinkError, acc: StreamAccumulator) -> LMLinkError:
    """A transport failure in mid-stream, re-raised as a StreamError carrying the partial."""
    attrs = {k: v for k, v in exc.__dict__.items() if k != "message"}
    partial = acc.response()
    message = (
        f"{exc.message} (after {len(partial.content)} characters of content; kept in .partial)"
    )
    return stream_variant(type(exc))(message, partial=partial, **attrs)


def _retry_log(state: RetryState, exc: LMLinkError, delay: float) -> None:
    log.info("lmlink: retry %d in %.2f s after: %s", state.retries, delay, exc)


class _StreamCore:
    """State shared by the two stream shells: decoder, accumulator, buffered deltas."""

    def __init__(
        self, client: BaseClient, call: Call, on_delta: Delta | None, on_reasoning: Delta | None
    ) -> None:
        self._client = client
        self._call = call
        self._on_delta = on_delta
        self._on_reasoning = on_reasoning
        self._decoder = SSEDecoder()
        self._acc = client._accumulator()
        self._buffer: list[str] = []
        self._ttft: float | None = None
        self._ended = False
        self._response: ChatResponse | None = None

    def _reset(self) -> None:
        self._decoder = SSEDecoder()
        self._acc = self._client._accumulator()
        self._buffer = []

    def _feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        acc = self._acc
        for event in self._decoder.feed(data):
            text = acc.feed(event)
            if acc.reasoning_delta and self._on_reasoning is not None:
                self._on_reasoning(acc.reasoning_delta)
            if text:
                out.append(text)
            if self._ttft is None and acc.output_seen:
                self._ttft = time.monotonic() - self._call.started
        return out

    def _finish(self) -> ChatResponse:
        """At the end of the body: the final response, or StreamError if it was cut off."""
        self._ended = True
        acc = self._acc
        self._decoder.close()
        if not acc.finished:
            why = "[DONE] without a finish_reason" if acc.done else "the connection closed"
            raise acc.truncated_error(why)
        return self._complete()

    def _complete(self) -> ChatResponse:
        out = self._acc.response()
        out.ttft_s = self._ttft
        out.latency_s = time.monotonic() - self._call.started
        self._client._parse_output(self._call, out)
        self._response = out
        return out

    @property
    def response(self) -> ChatResponse:
        """The aggregate response: final after the stream ended, partial if left early."""
        if self._response is not None:
            return self._response
        out = self._acc.response()
        out.ttft_s = self._ttft
        out.latency_s = time.monotonic() - self._call.started
        return out


class ChatStream(_StreamCore):
    """A streamed chat: iterate for content deltas; ``.response`` is the aggregate.

    >>> with client.stream("Tell me a story") as s:
    ...     for delta in s:
    ...         print(delta, end="")
    >>> s.response.output_tokens

    Leaving the block early closes the connection, so the server stops generating.
    """

    def __init__(
        self,
        client: Client,
        call: Call,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
    ) -> None:
        super().__init__(client, call, on_delta, on_reasoning)
        self._transport = client._transport
        self._resp: Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._sleep = client._sleep

    def __enter__(self) -> ChatStream:
        call = self._call
        deadline = self._client._deadline(call.started)
        state: RetryState | None = None
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            try:
                self._open(deadline)
                return self
            except LMLinkError as exc:
                self._close_response()
                state = state or self._client._retry_state(deadline)
                delay = state.delay_for(exc)
                _retry_log(state, exc, delay)
                self._sleep(delay)
                self._reset()
            except BaseException:
                self._close_response()
                raise

    def _open(self, deadline: float | None) -> None:
        call = self._call
        timeouts = self._client._timeouts(deadline)
        resp = self._transport.request(call.method, call.url, call.headers, call.body, timeouts)
        self._resp = resp
        if resp.status >= 300:
            body = resp.read(self._client._max_body)
            raise self._client._status_error(resp.status, resp.headers, body)
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            # The server answered with one JSON body (it ignored "stream": true).
            body = resp.read(self._client._max_body)
            self._response = self._client._finish_chat(call, body, time.monotonic() - call.started)
            self._ended = True
            if self._response.content:
                self._buffer.append(self._response.content)
            return
        self._chunks = resp.iter_bytes()
        # Read up to the first piece of output, so that failures before it can be retried.
        while not self._buffer and not self._acc.output_seen and not self._ended:
            self._pull()

    def _pull(self) -> None:
        assert self._chunks is not None
        try:
            data = next(self._chunks)
        except StopIteration:
            self._close_response()
            self._finish()
            return
        except LMLinkError as exc:
            raise _broken(exc, self._acc) from exc
        self._buffer.extend(self._feed(data))
        if self._acc.done:
            self._drain()

    def _drain(self) -> None:
        """After [DONE]: read the end of the body so the connection can be reused."""
        assert self._chunks is not None
        try:
            for _ in self._chunks:
                pass
        except LMLinkError:
            log.debug("lmlink: connection lost after [DONE]; ignored")
        self._close_response()
        self._finish()

    def __iter__(self) -> Iterator[str]:
        on_delta = self._on_delta
        while True:  # bounded: ends with the body
            if self._buffer:
                pending, self._buffer = self._buffer, []
                for text in pending:
                    if on_delta is not None:
                        on_delta(text)
                    yield text
            elif self._ended:
                return
            else:
                self._pull()

    def until_done(self) -> ChatResponse:
        """Consume the rest of the stream (calling the callbacks); return the aggregate."""
        for _ in self:
            pass
        return self.response

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def close(self) -> None:
        """Stop reading; an unfinished stream's connection is closed."""
        self._ended = True
        self._close_response()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatStream(_StreamCore):
    """The async twin of :class:`ChatStream`.

    >>> async with aclient.stream("Tell me a story") as s:
    ...     async for delta in s:
    ...         print(delta, end="")
    """

    def __init__(
        self,
        client: AsyncClient,
        call: Call,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
    ) -> None:
        super().__init__(client, call, on_delta, on_reasoning)
        self._transport = client._transport
        self._resp: AsyncResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aenter__(self) -> AsyncChatStream:
        call = self._call
        deadline = self._client._deadline(call.started)
        state: RetryState | None = None
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            try:
                await self._open(deadline)
                return self
            except LMLinkError as exc:
                await self._close_response()
                state = state or self._client._retry_state(deadline)
                delay = state.delay_for(exc)
                _retry_log(state, exc, delay)
                await asyncio.sleep(delay)
                self._reset()
            except BaseException:
                await self._close_response()
                raise

    async def _open(self, deadline: float | None) -> None:
        call = self._call
        timeouts = self._client._timeouts(deadline)
        resp = await self._transport.request(
            call.method, call.url, call.headers, call.body, timeouts
        )
        self._resp = resp
        if resp.status >= 300:
            body = await resp.read(self._client._max_body)
            raise self._client._status_error(resp.status, resp.headers, body)
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            # The server answered with one JSON body (it ignored "stream": true).
            body = await resp.read(self._client._max_body)
            self._response = self._client._finish_chat(call, body, time.monotonic() - call.started)
            self._ended = True
            if self._response.content:
                self._buffer.append(self._response.content)
            return
        self._chunks = resp.aiter_bytes()
        # Read up to the first piece of output, so that failures before it can be retried.
        while not self._buffer and not self._acc.output_seen and not self._ended:
            await self._pull()

    async def _pull(self) -> None:
        assert self._chunks is not None
        try:
            data = await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._close_response()
            self._finish()
            return
        except LMLinkError as exc:
            raise _broken(exc, self._acc) from exc
        self._buffer.extend(self._feed(data))
        if self._acc.done:
            await self._drain()

    async def _drain(self) -> None:
        """After [DONE]: read the end of the body so the connection can be reused."""
        assert self._chunks is not None
        try:
            async for _ in self._chunks:
                pass
        except LMLinkError:
            log.debug("lmlink: connection lost after [DONE]; ignored")
        await self._close_response()
        self._finish()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        on_delta = self._on_delta
        while True:  # bounded: ends with the body
            if self._buffer:
                pending, self._buffer = self._buffer, []
                for text in pending:
                    if on_delta is not None:
                        on_delta(text)
                    yield text
            elif self._ended:
                return
            else:
                await self._pull()

    async def until_done(self) -> ChatResponse:
        """Consume the rest of the stream (calling the callbacks); return the aggregate."""
        async for _ in self:
            pass
        return self.response

    async def _close_response(self) -> None:
        if self._resp is not None:
            resp, self._resp = self._resp, None
            await resp.aclose()

    async def aclose(self) -> None:
        """Stop reading; an unfinished stream's connection is closed."""
        self._ended = True
        await self._close_response()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Client(BaseClient):
    """A blocking client for an OpenAI-compatible server.

    >>> with lmlink.Client(endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b") as client:
    ...     print(client.chat("Say hi in five words").content)

    Settings not given come from ``LMLINK_ENDPOINT`` / ``OPENAI_BASE_URL``, ``LMLINK_MODEL``
    and ``LMLINK_API_KEY`` / ``OPENAI_API_KEY``. ``timeout`` is the idle timeout in seconds,
    or a :class:`Timeout`. Safe to share between threads.
    """

    _transport: SyncTransport
    _sleep: Callable[[float], None]

    def _setup(self) -> None:
        self._transport = SyncTransport(verify=self._verify, max_connections=self._max_connections)
        self._sleep = time.sleep

    def chat(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        **extra: Any,
    ) -> ChatResponse:
        """One chat completion, not streamed. Extra keywords go into the request body.

        >>> client.chat([{"role": "user", "content": "2+2?"}], max_tokens=8).content
        """
        call = self._prepare_chat(
            messages,
            model,
            stream=False,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            extra=extra,
        )
        return self._send(call, self._read_chat)

    def stream(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        **extra: Any,
    ) -> ChatStream:
        """A streamed chat, as a context manager to iterate (see :class:`ChatStream`)."""
        call = self._prepare_chat(
            messages,
            model,
            stream=True,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            extra=extra,
        )
        return ChatStream(self, call, on_delta, on_reasoning)

    def chat_stream(
        self,
        messages: MessagesInput,
        on_delta: Delta | None = None,
        *,
        on_reasoning: Delta | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Stream a chat, calling ``on_delta(text)`` for each content delta; return the
        aggregate. ``on_reasoning`` gets the reasoning deltas.

        >>> resp = client.chat_stream("Tell me a joke", on_delta=lambda t: print(t, end=""))
        """
        with self.stream(messages, on_delta=on_delta, on_reasoning=on_reasoning, **kwargs) as s:
            return s.until_done()

    def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``).

        >>> [m.id for m in client.models()]
        """
        return self._send(self._prepare_get("/models"), self._read_models)

    def _send(self, call: Call, read: Callable[[Call, Response], T]) -> T:
        deadline = self._deadline(call.started)
        state: RetryState | None = None
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            try:
                resp = self._transport.request(
                    call.method, call.url, call.headers, call.body, self._timeouts(deadline)
                )
                with resp:
                    return read(call, resp)
            except LMLinkError as exc:
                state = state or self._retry_state(deadline)
                delay = state.delay_for(exc)
                _retry_log(state, exc, delay)
                self._sleep(delay)

    def _read_chat(self, call: Call, resp: Response) -> ChatResponse:
        ttft = time.monotonic() - call.started
        body = resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return self._finish_chat(call, body, ttft)

    def _read_models(self, call: Call, resp: Response) -> list[ModelInfo]:
        body = resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return decode_models(body)

    def close(self) -> None:
        """Close every pooled connection."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`Client`; same constructor, awaitable methods.

    >>> async with lmlink.AsyncClient(model="qwen3:8b") as client:
    ...     resp = await client.chat("Say hi")
    """

    _transport: AsyncTransport

    def _setup(self) -> None:
        self._transport = AsyncTransport(verify=self._verify, max_connections=self._max_connections)

    async def chat(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        **extra: Any,
    ) -> ChatResponse:
        """One chat completion, not streamed. Extra keywords go into the request body."""
        call = self._prepare_chat(
            messages,
            model,
            stream=False,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            extra=extra,
        )
        return await self._send(call, self._read_chat)

    def stream(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        **extra: Any,
    ) -> AsyncChatStream:
        """A streamed chat, as an async context manager (see :class:`AsyncChatStream`)."""
        call = self._prepare_chat(
            messages,
            model,
            stream=True,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            extra=extra,
        )
        return AsyncChatStream(self, call, on_delta, on_reasoning)

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

    async def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``)."""
        return await self._send(self._prepare_get("/models"), self._read_models)

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
                state = state or self._retry_state(deadline)
                delay = state.delay_for(exc)
                _retry_log(state, exc, delay)
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
        return decode_models(body)

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

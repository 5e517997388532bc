"""The asyncio stream shell, :class:`AsyncChatStream`: the twin of ``ChatStream`` in
``_streaming.py``, written line for line in parallel around the same :class:`StreamCore`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

from ._core import Attempts, Call, StreamContext
from ._errors import LMLinkError
from ._http import AsyncHTTPResponse
from ._models import ChatResponse
from ._streaming import AFTER_DONE, Delta, Planned, StreamCore

__all__ = ["AsyncChatStream"]


class AsyncChatStream(StreamCore):
    """The async twin of :class:`ChatStream`.

    >>> async with aclient.stream("Tell me a story") as s:
    ...     async for delta in s:
    ...         print(delta, end="")
    """

    def __init__(
        self,
        context: StreamContext,
        planned: Planned,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        *,
        send: Callable[[Call], Awaitable[AsyncHTTPResponse]],
        prepare: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(context, planned, on_delta, on_reasoning)
        self._send = send
        self._prepare = prepare
        self._resp: AsyncHTTPResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aenter__(self) -> AsyncChatStream:
        await self._prepare()  # discovery, when no endpoint is configured
        run = self._begin()
        try:
            await self._connect(run)
        except BaseException as exc:
            self._watch_failed(exc)
            raise
        return self

    async def _connect(self, run: Attempts) -> None:
        while True:  # bounded: by the attempt loop (retry budget, the plan's fallbacks)
            try:
                await self._open(run)
                return
            except LMLinkError as exc:
                await self._close_response()
                await asyncio.sleep(self._failed(exc))
            except BaseException:
                await self._close_response()
                raise

    async def _open(self, run: Attempts) -> None:
        resp = self._resp = await self._send(run.call)
        if not self._is_stream(resp.status, resp.headers):
            self._whole(resp.status, resp.headers, await resp.read(self._context.max_body))
            return
        self._chunks = resp.aiter_bytes()
        # Read up to the first piece of output, so that failures before it can be retried.
        while not self._buffer and not self._acc.output_seen and not self._ended:
            await self._pull()

    async def _pull(self) -> None:
        assert self._chunks is not None
        self._raise_failure()
        if not self._acc.done:  # else [DONE] came with deltas, handed out by now
            try:
                data = await self._chunks.__anext__()
            except StopAsyncIteration:
                await self._close_response()
                self._finish()
                return
            except LMLinkError as exc:
                raise self._broken(exc) from exc
            if not self._took(data):
                return
        await self._drain()

    async def _drain(self) -> None:
        """After [DONE]: the end of the body, if it follows within a moment (then the
        connection is reused), and the final response."""
        resp, self._resp = self._resp, None
        if resp is not None:
            await resp.discard_rest(AFTER_DONE)
        self._finish()

    def __aiter__(self) -> AsyncIterator[str]:
        self._check_entered("async with client.stream(...) as s: async for delta in s")
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        on_delta = self._on_delta
        while True:  # bounded: ends with the body
            if self._buffer:
                text = self._buffer.popleft()
                if on_delta is not None:
                    on_delta(text)
                yield text
            elif self._ended and self._failure is None:
                return
            else:
                try:
                    await self._pull()
                except Exception as exc:
                    self._watch_failed(exc)
                    raise

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
        self._watch_ended()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._watch_failed(exc)
        await self.aclose()

"""The asyncio stream shell, :class:`AsyncChatStream`: the twin of ``ChatStream`` in
``_streaming.py``, written line for line in parallel around the same :class:`StreamCore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from ._atransport import AsyncResponse
from ._errors import LMLinkError
from ._models import ChatResponse
from ._plan import ChatPlan
from ._retry import RetryState
from ._streaming import AFTER_DONE, Delta, StreamCore, broken

if TYPE_CHECKING:
    from ._aclient import AsyncClient

__all__ = ["AsyncChatStream"]


class AsyncChatStream(StreamCore):
    """The async twin of :class:`ChatStream`.

    >>> async with aclient.stream("Tell me a story") as s:
    ...     async for delta in s:
    ...         print(delta, end="")
    """

    def __init__(
        self,
        client: AsyncClient,
        plan: ChatPlan,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
    ) -> None:
        super().__init__(client, plan, on_delta, on_reasoning)
        self._owner = client
        self._transport = client._transport
        self._resp: AsyncResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aenter__(self) -> AsyncChatStream:
        await self._owner._ensure_endpoint()
        self._call = self._client._call(self._plan, self._started)
        deadline = self._client._deadline(self._started)
        state: RetryState | None = None
        while True:  # bounded: by the retry budget and the plan's fallbacks
            try:
                await self._open(deadline)
                return self
            except LMLinkError as exc:
                await self._close_response()
                delay, state = self._after_failure(exc, state)
                if delay:
                    await asyncio.sleep(delay)
            except BaseException:
                await self._close_response()
                raise

    async def _open(self, deadline: float | None) -> None:
        call = self._call
        assert call is not None
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
            self._plan.accept(self._response)
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
        if self._acc.done:  # [DONE] came with deltas; they are handed out now
            await self._drain()
            return
        try:
            data = await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._close_response()
            self._finish()
            return
        except LMLinkError as exc:
            raise broken(exc, self._acc) from exc
        self._buffer.extend(self._feed(data))
        if self._acc.done and not self._buffer:
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

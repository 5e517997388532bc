"""Streams: :class:`ChatStream` (here) and ``AsyncChatStream`` (``_astreaming.py``), two thin
I/O shells around one shared core (:class:`StreamCore`: decoder, accumulator, buffered
deltas, timings).

Opening a stream reads up to the first piece of output, so that every failure before it
(a refusal, a 503, a connection cut, an in-band error) can be retried or adapted to like a
plain call; after that nothing is retried, because the caller has seen text.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._base import BaseClient, Call
from ._errors import (
    APIStatusError,
    ConfigurationError,
    LMLinkError,
    ResponseTooLargeError,
    stream_variant,
)
from ._log import log
from ._models import ChatResponse
from ._plan import ChatPlan
from ._retry import RetryState, reached_caller
from ._sse import SSEDecoder
from ._stream import StreamAccumulator
from ._transport import Response

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["ChatStream", "Delta", "StreamCore", "broken", "retry_log"]


Delta = Callable[[str], Any]


def broken(exc: LMLinkError, acc: StreamAccumulator) -> LMLinkError:
    """A transport failure in mid-stream, re-raised as a StreamError carrying the partial."""
    attrs = {k: v for k, v in exc.__dict__.items() if k != "message"}
    partial = acc.partial()
    got = len(partial.content)
    message = f"{acc.redact(exc.message)} (after {got} characters of content; kept in .partial)"
    return stream_variant(type(exc))(message, partial=partial, **attrs)


def retry_log(state: RetryState, exc: LMLinkError, delay: float) -> None:
    log.info("lmlink: retry %d in %.2f s after: %s", state.retries, delay, exc)


# After [DONE], how long the end of the body may take before the connection is given up
# rather than reused: servers send it at once, a broken one might never.
AFTER_DONE = 0.25


class StreamCore:
    """State shared by the two stream shells: decoder, accumulator, buffered deltas."""

    def __init__(
        self, client: BaseClient, plan: ChatPlan, on_delta: Delta | None, on_reasoning: Delta | None
    ) -> None:
        self._client = client
        self._plan = plan
        self._started = time.monotonic()
        self._call: Call | None = None
        self._on_delta = on_delta
        self._on_reasoning = on_reasoning
        self._decoder = SSEDecoder()
        self._acc = client._accumulator()
        self._buffer: deque[str] = deque()  # deltas read but not yet handed out
        self._received = 0  # body bytes of this attempt, against max_response_bytes
        self._ttft: float | None = None
        self._ended = False
        self._response: ChatResponse | None = None

    def _after_failure(
        self, exc: LMLinkError, state: RetryState | None
    ) -> tuple[float, RetryState | None]:
        """Adapt the request to a refusal (no wait), or return the retry wait."""
        self._client._scrub(exc)
        self._decoder = SSEDecoder()
        self._acc = self._client._accumulator()
        self._buffer.clear()
        self._received = 0
        if isinstance(exc, APIStatusError) and not reached_caller(exc) and self._plan.adapt(exc):
            self._call = self._client._call(self._plan, self._started)
            return 0.0, state
        state = state or self._client._retry_state(self._client._deadline(self._started))
        delay = state.delay_for(exc)
        retry_log(state, exc, delay)
        return delay, state

    def _feed(self, data: bytes) -> list[str]:
        self._received += len(data)
        if self._received > self._client._max_body:
            raise self._too_large()
        out: list[str] = []
        acc = self._acc
        for event in self._decoder.feed(data):
            text = acc.feed(event)
            if acc.reasoning_delta and self._on_reasoning is not None:
                self._on_reasoning(acc.reasoning_delta)
            if text:
                out.append(text)
            if self._ttft is None and acc.output_seen:
                self._ttft = time.monotonic() - self._started
        return out

    def _too_large(self) -> LMLinkError:
        limit = self._client._max_body
        return stream_variant(ResponseTooLargeError)(
            f"the stream went over max_response_bytes ({limit} bytes); the text so far is in "
            ".partial",
            partial=self._acc.partial(),
        )

    def _finish(self) -> ChatResponse:
        """At the end of the body: the final response, or StreamError if it was cut off."""
        self._ended = True
        acc = self._acc
        self._decoder.close()
        tail = acc.flush()  # text held back as a possible <think> tag: it was not one
        if acc.reasoning_delta and self._on_reasoning is not None:
            self._on_reasoning(acc.reasoning_delta)
        if tail:
            self._buffer.append(tail)
        if not acc.finished:
            why = "[DONE] without a finish_reason" if acc.done else "the connection closed"
            raise acc.truncated_error(why)
        return self._complete()

    def _complete(self) -> ChatResponse:
        out = self._acc.response()
        out.ttft_s = self._ttft
        out.latency_s = time.monotonic() - self._started
        self._plan.accept(out)
        self._response = out
        return out

    def _check_entered(self, usage: str) -> None:
        if self._call is None:
            raise ConfigurationError(f"a stream is read inside its context manager: {usage}")

    @property
    def response(self) -> ChatResponse:
        """The aggregate response. After a stream read to its end, the final one; after
        leaving early, what was handed out (text read but not yet delivered is left out, and
        ``finish_reason`` is None)."""
        if self._response is not None and not self._buffer:
            return self._response
        out = self._acc.response()
        out.ttft_s = self._ttft
        out.latency_s = time.monotonic() - self._started
        if self._buffer:
            unseen = "".join(self._buffer)
            if out.content.endswith(unseen):
                out.content = out.content[: -len(unseen)]
            out.finish_reason = out.finish_reason_raw = None
        return out


class ChatStream(StreamCore):
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
        plan: ChatPlan,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
    ) -> None:
        super().__init__(client, plan, on_delta, on_reasoning)
        self._transport = client._transport
        self._resp: Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._sleep = client._sleep

    def __enter__(self) -> ChatStream:
        self._call = self._client._call(self._plan, self._started)
        deadline = self._client._deadline(self._started)
        state: RetryState | None = None
        while True:  # bounded: by the retry budget and the plan's fallbacks
            try:
                self._open(deadline)
                return self
            except LMLinkError as exc:
                self._close_response()
                delay, state = self._after_failure(exc, state)
                if delay:
                    self._sleep(delay)
            except BaseException:
                self._close_response()
                raise

    def _open(self, deadline: float | None) -> None:
        call = self._call
        assert call is not None
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
            self._plan.accept(self._response)
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
        if self._acc.done:  # [DONE] came with deltas; they are handed out now
            self._drain()
            return
        try:
            data = next(self._chunks)
        except StopIteration:
            self._close_response()
            self._finish()
            return
        except LMLinkError as exc:
            raise broken(exc, self._acc) from exc
        self._buffer.extend(self._feed(data))
        if self._acc.done and not self._buffer:
            self._drain()

    def _drain(self) -> None:
        """After [DONE]: the end of the body, if it follows within a moment (then the
        connection is reused), and the final response."""
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.discard_rest(AFTER_DONE)
        self._finish()

    def __iter__(self) -> Iterator[str]:
        self._check_entered("with client.stream(...) as s: for delta in s")
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

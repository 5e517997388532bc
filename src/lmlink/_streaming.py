"""Streams: :class:`ChatStream` (here) and ``AsyncChatStream`` (``_astreaming.py``), two thin
I/O shells around one shared core (:class:`StreamCore`: decoder, buffered deltas, timings,
and the decisions of opening a stream).

Opening a stream reads up to the first piece of output, so that every failure before it
(a refusal, a 503, a connection cut, an in-band error) goes through the same attempt loop as
a plain call (retried, or adapted to); after that nothing is retried, because the caller
has seen text. Text that arrived before a failure is handed out first, in order, then the
failure is raised.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from . import _observe
from ._adapt import ChatPlan
from ._answer import AnswerDecoder, is_event_stream
from ._core import Attempts, Call, StreamContext
from ._errors import (
    ConfigurationError,
    LMLinkError,
    ResponseTooLargeError,
    stream_variant,
)
from ._http import HTTPResponse
from ._models import ChatResponse
from ._options import CallOptions
from ._sse import SSEDecoder

__all__ = ["ChatStream", "Delta", "Planned", "StreamCore", "broken"]


Delta = Callable[[str], Any]
# A stream's plan and options, or (the async client before discovery) how to make them.
Planned = tuple[ChatPlan, CallOptions] | Callable[[], tuple[ChatPlan, CallOptions]]


def broken(exc: LMLinkError, acc: AnswerDecoder) -> LMLinkError:
    """A transport failure in mid-stream, re-raised as a StreamError carrying the partial."""
    attrs = {k: v for k, v in exc.__dict__.items() if k != "message"}
    partial = acc.partial()
    got = len(partial.content)
    message = f"{acc.redact(exc.message)} (after {got} characters of content; kept in .partial)"
    return stream_variant(type(exc))(message, partial=partial, **attrs)


# After [DONE], how long the end of the body may take before the connection is given up
# rather than reused: servers send it at once, a broken one might never.
AFTER_DONE = 0.25


class StreamCore:
    """State and decisions shared by the two stream shells."""

    def __init__(
        self,
        context: StreamContext,
        planned: Planned,
        on_delta: Delta | None,
        on_reasoning: Delta | None,
    ) -> None:
        self._context = context
        self._planned = planned
        self._run: Attempts | None = None
        self._started = time.monotonic()  # again when the request is sent (_begin)
        self._on_delta = on_delta
        self._on_reasoning = on_reasoning
        self._decoder = SSEDecoder()
        self._acc = context.decoder()
        self._buffer: deque[str] = deque()  # deltas read but not yet handed out
        self._failure: LMLinkError | None = None  # raised once the buffer is handed out
        self._received = 0  # body bytes of this attempt, against max_response_bytes
        self._head = b""  # the body's first bytes, until an event arrives
        self._ttft: float | None = None
        self._ended = False
        self._response: ChatResponse | None = None
        self._watch: _observe.Watches | None = None  # when instrumented (lmlink.otel)

    def _begin(self) -> Attempts:
        """The attempts of this stream (planned now if the plan waited for discovery). The
        call's clock, its total deadline included, starts here, as its request is sent, not
        when the stream object was made."""
        planned = self._planned
        plan, options = planned() if callable(planned) else planned
        self._started = time.monotonic()
        run = self._run = self._context.attempts(plan, options, self._started)
        if _observe.observers:
            self._watch = _observe.start(_observe.chat_operation(plan, run.call.url))
        return run

    def _watch_failed(self, exc: BaseException) -> None:
        """The stream ends with ``exc`` (its own failure, or the caller's leaving the block
        by an exception): the observers are told so."""
        if self._watch is not None:
            self._watch.fail(exc)

    def _watch_ended(self) -> None:
        """The stream is over (or left early): the observers get what it received."""
        if self._watch is not None:
            self._watch.end(self.response)

    def _scrub(self, exc: LMLinkError) -> LMLinkError:
        """``exc`` with the client's secrets blanked out, and those of the call's headers."""
        run = self._run
        return self._context.scrub(exc) if run is None else run.scrub(exc)

    def _failed(self, exc: LMLinkError) -> float:
        """An attempt failed before any output: start over, after the wait the attempt loop
        decides (it raises when there is no next attempt)."""
        self._decoder = SSEDecoder()
        self._acc = self._context.decoder()
        self._buffer.clear()
        self._failure = None
        self._received = 0
        self._head = b""
        assert self._run is not None
        return self._run.failed(exc)

    def _is_stream(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether the response is an event stream; else its body is read whole and given
        to :meth:`_whole` (an error status, or a server that ignored ``"stream": true``)."""
        return status < 300 and is_event_stream(headers)

    def _whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """A response that is not a stream: the error it reports, or the whole answer as
        one delta."""
        assert self._run is not None
        resp = self._context.answer(self._run.call, status, headers, body)
        self._run.accept(resp)
        self._response = resp
        self._ended = True
        self._watch_ended()
        if resp.reasoning and self._on_reasoning is not None:
            self._on_reasoning(resp.reasoning)  # as a stream would have, before the text
        if resp.content:
            self._buffer.append(resp.content)

    def _feed(self, data: bytes) -> list[str]:
        """The content deltas ``data`` completes. A failure among its events is kept for
        after them (:meth:`_raise_failure`): what arrived before it is handed out first."""
        self._received += len(data)
        if not self._acc.events and len(self._head) < 300:
            self._head += data[:300]  # quoted if no event ever comes (see _finish)
        if self._received > self._context.max_body:
            raise self._scrub(self._too_large())
        out: list[str] = []
        acc = self._acc
        try:
            for event in self._decoder.feed(data):
                text = acc.feed(event)
                if acc.reasoning_delta and self._on_reasoning is not None:
                    self._on_reasoning(acc.reasoning_delta)
                if text:
                    out.append(text)
                if self._ttft is None and acc.output_seen:
                    self._ttft = time.monotonic() - self._started
        except LMLinkError as exc:
            if not out:
                raise self._scrub(exc) from None
            self._failure = exc
        return out

    def _took(self, data: bytes) -> bool:
        """Fold one read in; whether the stream is now over with nothing left to hand out
        (``[DONE]`` arrived: the shell drains the rest of the body)."""
        self._buffer.extend(self._feed(data))
        return self._acc.done and not self._buffer

    def _raise_failure(self) -> None:
        exc = self._failure
        if exc is not None:
            self._failure = None
            self._ended = True
            raise self._scrub(exc)

    def _broken(self, exc: LMLinkError) -> LMLinkError:
        return self._scrub(broken(exc, self._acc))

    def _too_large(self) -> LMLinkError:
        limit = self._context.max_body
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
            if not acc.events and acc.stray is None and self._head.strip():
                acc.stray = self._head[:300]  # not an event stream at all: quote it
            why = "[DONE] without a finish_reason" if acc.done else "the connection closed"
            raise self._scrub(acc.truncated_error(why))
        out = acc.response()
        out.ttft_s = self._ttft
        out.latency_s = time.monotonic() - self._started
        out.streamed = True
        assert self._run is not None
        self._run.accept(out)
        self._response = out
        self._watch_ended()
        return out

    def _check_entered(self, usage: str) -> None:
        if self._run is None:
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
        out.streamed = True
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
        context: StreamContext,
        planned: Planned,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        *,
        send: Callable[[Call], HTTPResponse],
        sleep: Callable[[float], None],
    ) -> None:
        super().__init__(context, planned, on_delta, on_reasoning)
        self._send = send
        self._sleep = sleep
        self._resp: HTTPResponse | None = None
        self._chunks: Iterator[bytes] | None = None

    def __enter__(self) -> ChatStream:
        run = self._begin()
        try:
            self._connect(run)
        except BaseException as exc:
            self._watch_failed(exc)
            raise
        return self

    def _connect(self, run: Attempts) -> None:
        while True:  # bounded: by the attempt loop (retry budget, the plan's fallbacks)
            try:
                self._open(run)
                return
            except LMLinkError as exc:
                self._close_response()
                self._sleep(self._failed(exc))
            except BaseException:
                self._close_response()
                raise

    def _open(self, run: Attempts) -> None:
        resp = self._resp = self._send(run.call)
        if not self._is_stream(resp.status, resp.headers):
            self._whole(resp.status, resp.headers, resp.read(self._context.max_body))
            return
        self._chunks = resp.iter_bytes()
        # Read up to the first piece of output, so that failures before it can be retried.
        while not self._buffer and not self._acc.output_seen and not self._ended:
            self._pull()

    def _pull(self) -> None:
        assert self._chunks is not None
        self._raise_failure()
        if not self._acc.done:  # else [DONE] came with deltas, handed out by now
            try:
                data = next(self._chunks)
            except StopIteration:
                self._close_response()
                self._finish()
                return
            except LMLinkError as exc:
                raise self._broken(exc) from exc
            if not self._took(data):
                return
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
            elif self._ended and self._failure is None:
                return
            else:
                try:
                    self._pull()
                except Exception as exc:
                    self._watch_failed(exc)
                    raise

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
        self._watch_ended()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._watch_failed(exc)
        self.close()

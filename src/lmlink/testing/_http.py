"""The HTTP/1.1 side: one :class:`Connection` (an asyncio Protocol) per TCP connection.

A Protocol rather than streams because the common case (an answer without delays) is then
parsed, dispatched and written inside one ``data_received`` call, with no task per request;
only paced, delayed or stalled answers get a task. Requests on one connection are answered
in order (pipelined ones wait in the buffer).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Protocol, cast

from ._json import dumps, loads
from ._render import Plan

__all__ = ["Connection", "Handler", "RecordedRequest", "Stats"]

_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    ``headers`` has lower-cased names; ``json`` is the parsed body, or None when the body is
    empty or not JSON; ``path`` excludes the query string (see ``query``).

    Example::

        req = srv.requests[-1]
        assert req.path == "/v1/chat/completions"
        assert req.headers["content-type"] == "application/json"
        assert req.json["messages"][-1]["content"] == "hi"
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    query: str = ""
    http_version: str = "HTTP/1.1"


@dataclass
class Stats:
    """Counters kept by the server; ``srv.stats`` returns a snapshot copy.

    ``client_disconnects`` counts connections the client closed while a response was still
    being sent or awaited (mid-stream, during a stall or a delay); ``cuts`` and ``stalls``
    count faults played; ``faults`` counts random :class:`Faults` by name.

    Example::

        assert srv.stats.streams_completed == 1
        assert srv.stats.client_disconnects == 0
    """

    connections_opened: int = 0
    connections_closed: int = 0
    requests: int = 0
    chat_requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    client_disconnects: int = 0
    cuts: int = 0
    stalls: int = 0
    server_errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def active_connections(self) -> int:
        """Connections open right now. Example: ``srv.stats.active_connections == 0``."""
        return self.connections_opened - self.connections_closed

    def snapshot(self) -> Stats:
        """An independent copy. Example: ``before = srv.stats`` (already a snapshot)."""
        return replace(self, faults=dict(self.faults))


class Handler(Protocol):
    """What a Connection needs from the server that owns it."""

    live_stats: Stats

    def dispatch(self, request: RecordedRequest) -> Plan:
        """Decide the response to one request."""

    def fail(self, exc: BaseException) -> Plan:
        """Record an unexpected exception; return a 500 response."""

    def opened(self, conn: Connection) -> None:
        """A connection was accepted."""

    def closed(self, conn: Connection) -> None:
        """A connection is gone."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _frame(step: bytes, chunked: bool) -> bytes:
    """One body step, as an HTTP chunk when chunked."""
    if not chunked:
        return step
    return b"%x\r\n%s\r\n" % (len(step), step) if step else b""


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked request body starting at ``pos``: (body, end) or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            # No trailers is "\r\n"; otherwise skip them up to the blank line.
            if len(buf) < pos + 2:
                return None
            if buf[pos : pos + 2] == b"\r\n":
                return b"".join(parts), pos + 2
            end = buf.find(b"\r\n\r\n", pos)
            return None if end < 0 else (b"".join(parts), end + 4)
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class Connection(asyncio.Protocol):
    """Serves HTTP/1.1 (keep-alive, pipelining, chunked uploads, 100-continue) on one socket."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop) -> None:
        self._h = handler
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a response is under way: later requests wait in the buffer
        self._in_flight = False  # the client is owed (more of) a response
        self._closed = False
        self._we_closed = False
        self._paused = False
        self._draining = False
        self._continued = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server."""
        self._transport = cast(asyncio.Transport, transport)
        self._h.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Count client disconnects and wake whatever waits on this connection."""
        self._closed = True
        if self._in_flight and not self._we_closed:
            self._h.live_stats.client_disconnects += 1
        if self._waiter is not None:
            _wake(self._waiter)
        self._h.closed(self)

    def data_received(self, data: bytes) -> None:
        """Buffer bytes; answer every complete request unless a response is under way."""
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        """The client closed its side: treat it as gone (a stall or a paced stream ends here).

        HTTP clients close both directions at once, so a FIN is the only sign of a client that
        left during a stall; answering half-closed clients is not worth missing that.
        """
        return None

    def pause_writing(self) -> None:
        """The transport buffer is full: paced streams wait before their next step."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport buffer drained: wake a paced stream waiting for that (not a delay)."""
        self._paused = False
        if self._draining and self._waiter is not None:
            _wake(self._waiter)

    def abort(self) -> None:
        """Drop the connection at once (server shutdown)."""
        self._we_closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- request side -------------------------------------------------------------------------

    def _process(self) -> None:
        while not self._busy and not self._closed and not self._we_closed and self._buf:
            try:
                req = self._parse()
            except ValueError:
                self._reject(400)
                return
            if req is None:
                return
            try:
                plan = self._h.dispatch(req)
            except Exception as exc:
                plan = self._h.fail(exc)
            conn = req.headers.get("connection", "").lower()
            client10 = req.http_version == "HTTP/1.0"
            keep = ("keep-alive" in conn) if client10 else ("close" not in conn)
            try:
                self._start(plan, keep and not plan.http10, req.method == "HEAD", client10)
            except Exception as exc:  # a bug here must not go unnoticed as a loop log line
                self._h.fail(exc)
                self.abort()

    def _parse(self) -> RecordedRequest | None:
        buf = self._buf
        while buf[:2] == b"\r\n":  # stray CRLFs between requests are allowed (RFC 9112 §2.2)
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ValueError("request head too large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            got = _dechunk(buf, start)
            if got is None:
                self._maybe_continue(headers)
                return None
            body, stop = got
        else:
            stop = start + int(headers.get("content-length") or 0)
            if len(buf) < stop:
                self._maybe_continue(headers)
                return None
            body = bytes(buf[start:stop])
        del buf[:stop]
        self._continued = False
        parsed: Any = None
        if body:
            try:
                parsed = loads(body)
            except ValueError:
                parsed = None
        path, _, query = target.partition("?")
        return RecordedRequest(method, path, headers, body, parsed, query, version)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if not self._continued and headers.get("expect", "").lower() == "100-continue":
            self._continued = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _reject(self, status: int) -> None:
        body = dumps({"error": {"message": _REASONS[status], "type": "invalid_request_error"}})
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self._busy = True
        self._write(head.encode() + body)
        self._close()

    # -- response side ------------------------------------------------------------------------

    def _start(self, plan: Plan, keep: bool, head_only: bool, client10: bool) -> None:
        self._in_flight = True
        if plan.hold or plan.wait > 0 or (plan.steps and plan.delay > 0):
            self._busy = True
            self._loop.create_task(self._slow(plan, keep, head_only, client10))
        else:
            self._send(plan, keep, head_only, client10)

    def _head(self, plan: Plan, keep: bool, chunked: bool, client10: bool) -> bytes:
        version = "HTTP/1.0" if plan.http10 else "HTTP/1.1"
        reason = _REASONS.get(plan.status, "Unknown")
        lines = [f"{version} {plan.status} {reason}", f"Server: {plan.server}"]
        lines += [f"{k}: {v}" for k, v in plan.headers]
        if plan.steps is None:
            lines.append(f"Content-Length: {len(plan.body)}")
        elif chunked:
            lines.append("Transfer-Encoding: chunked")
        if not keep:
            lines.append("Connection: close")
        elif client10:
            lines.append("Connection: keep-alive")
        lines.append("\r\n")
        return "\r\n".join(lines).encode()

    def _send(self, plan: Plan, keep: bool, head_only: bool, client10: bool) -> None:
        """Write a whole response at once (no pacing left to do)."""
        stats = self._h.live_stats
        if plan.raw is not None:
            self._write(plan.raw)
            self._close()
            return
        chunked = plan.steps is not None and not (plan.http10 or client10)
        keep = keep and (chunked or plan.steps is None)
        head = self._head(plan, keep, chunked, client10)
        if plan.cut_before_body:
            stats.cuts += 1
            self._write(head)
            self._close()
            return
        if plan.steps is None:
            self._write(head if head_only else head + plan.body)
            self._done(keep)
            return
        stats.streams_started += 1
        body = b"".join(_frame(s, chunked) for s in plan.steps)
        if plan.end == "done":
            # One write for the whole stream; counters first, so a client that has read
            # everything also sees them updated.
            stats.streams_completed += 1
            self._write(head + body + (b"0\r\n\r\n" if chunked else b""))
            self._done(keep)
        else:
            self._write(head + body)
            self._end(plan, keep, chunked)

    async def _slow(self, plan: Plan, keep: bool, head_only: bool, client10: bool) -> None:
        """Responses with waits, holds or pacing."""
        try:
            if plan.wait > 0:
                await self._sleep(plan.wait)
            if plan.hold:
                self._h.live_stats.stalls += 1
                await self._sleep(None)
            if self._closed:
                return
            if (
                plan.steps is None
                or plan.delay <= 0
                or plan.raw is not None
                or plan.cut_before_body
            ):
                self._send(plan, keep, head_only, client10)
            else:
                await self._paced(plan, keep, client10)
            if plan.end == "stall" and plan.steps is not None:
                await self._sleep(None)
        except Exception as exc:  # never let a bug kill the loop silently
            self._h.fail(exc)
            self.abort()
        finally:
            if not self._closed and not self._we_closed:
                self._busy = False
                if self._buf:
                    self._process()

    async def _paced(self, plan: Plan, keep: bool, client10: bool) -> None:
        assert plan.steps is not None
        chunked = not (plan.http10 or client10)
        keep = keep and chunked
        self._write(self._head(plan, keep, chunked, client10))
        self._h.live_stats.streams_started += 1
        for i, step in enumerate(plan.steps):
            if i:
                await self._sleep(plan.delay)
            while self._paused and not self._closed:
                self._draining = True
                await self._sleep(None)
                self._draining = False
            if self._closed:
                return
            self._write(_frame(step, chunked))
        self._end(plan, keep, chunked)

    def _end(self, plan: Plan, keep: bool, chunked: bool) -> None:
        stats = self._h.live_stats
        if plan.end == "done":
            stats.streams_completed += 1  # before the last bytes: see _send
            if chunked:
                self._write(b"0\r\n\r\n")
            self._done(keep)
        elif plan.end == "cut":
            # close() flushes what was written, then FIN: the chunked body stays unterminated.
            stats.cuts += 1
            self._close()
        else:
            # Stall: stay busy with the response in flight until the client or server gives up.
            stats.stalls += 1
            self._busy = True

    def _done(self, keep: bool) -> None:
        self._in_flight = False
        if not keep:
            self._close()

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep (forever when None) but wake early when the connection closes or drains."""
        if self._closed:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut
        timer = self._loop.call_later(seconds, _wake, fut) if seconds is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _write(self, data: bytes) -> None:
        if not self._closed and not self._we_closed and self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        self._we_closed = True
        self._busy = True  # nothing more will be answered on this connection
        if self._transport is not None:
            self._transport.close()

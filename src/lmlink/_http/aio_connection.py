"""One asyncio connection of :class:`~lmlink._http.aio.AsyncTransport`: the protocol that
feeds a response parser and wakes the coroutine waiting for it, with lazily re-armed timers
(see the transport's docstring for the design)."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from typing import TYPE_CHECKING, cast

from lmlink._errors import APIConnectionError, LMLinkError

from .common import Timeouts, budget, io_error, timeout_error
from .request import Target
from .response import ResponseParser

if TYPE_CHECKING:
    from .aio import AsyncTransport

__all__ = ["AsyncConnection"]

_HIGH_WATER = 1 << 20  # undelivered body bytes at which reading pauses (backpressure)
_INF = float("inf")


class AsyncConnection(asyncio.BufferedProtocol):
    """One connection: feeds the current response's parser and wakes its reader.

    A buffered protocol, reading into one 64 KiB buffer shared by the transport's
    connections: a plain Protocol makes asyncio allocate a fresh 256 KiB buffer per read,
    which glibc serves with mmap/munmap (measured: a third of the CPU of a small request).
    Sharing is safe because the loop calls :meth:`buffer_updated` right after each read,
    which copies the bytes out before any other read can happen.
    """

    def __init__(self, pool: AsyncTransport, loop: asyncio.AbstractEventLoop, t: Target) -> None:
        self._pool = pool
        self._loop = loop
        self.key = t.key
        self.where = t.where
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser: ResponseParser | None = None  # None while idle in the pool
        self.waiter: asyncio.Future[bool] | None = None
        self.exc: LMLinkError | None = None
        self.used = 0
        self.idle = False  # in the pool's idle list
        self.lost = False  # the loop reported EOF or connection_lost
        self.dead = False  # closed and no longer counted by the pool
        self.paused = False
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._expiry = _INF

    # -- protocol callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._pool._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._pool._read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # an idle connection must stay silent: never reuse this one
            self.lost = True
            self.transport.abort()
            return
        try:
            parser.feed(data)
        except LMLinkError as exc:
            self.exc = exc
            self.transport.abort()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(True)
        elif parser.pending > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        self.lost = True
        self._eof()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        parser = self.parser
        if parser is None:
            self._pool._lost_idle(self)
        elif self.exc is None and not parser.done:
            if isinstance(exc, OSError):
                self.exc = io_error(exc, self.where, True, parser.received)
            else:
                self._eof()
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _eof(self) -> None:
        parser = self.parser
        if parser is not None and self.exc is None:
            try:
                parser.feed_eof()
            except LMLinkError as exc:
                self.exc = exc

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(True)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        left = self._expiry - self._loop.time()
        if left > 1e-3:  # the wait that armed this timer ended; a later one runs longer
            if left != _INF:
                self._timer = self._loop.call_at(self._expiry, self._on_timer)
            return
        self.waiter = None
        waiter.set_result(False)

    # -- used by the transport and responses ------------------------------------------------

    async def wait(self, timeouts: Timeouts, start: float, writing: bool = False) -> None:
        """Wait for the next event: bytes, EOF, an error, or room to write."""
        if self.exc is not None:
            raise self.exc
        if self.lost and self.parser is not None and not self.parser.done:
            raise APIConnectionError(
                f"the connection to {self.where} is closed", request_sent=True, reason="closed"
            )
        wait, phase, limit = budget(timeouts, start)
        if wait is not None and wait <= 0:
            raise timeout_error(phase, limit, self.where, not writing, writing=writing)
        loop = self._loop
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        waiter = loop.create_future()
        self.waiter = waiter
        if wait is None:
            self._expiry = _INF
        else:
            expiry = self._expiry = loop.time() + wait
            timer = self._timer
            if timer is None or timer.when() > expiry:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(expiry, self._on_timer)
        try:
            progressed = await waiter
        finally:
            if self.waiter is waiter:
                self.waiter = None
        if not progressed:
            raise timeout_error(phase, limit, self.where, not writing, writing=writing)
        if self.exc is not None:
            raise self.exc

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lost = True
        transport = self.transport
        if transport is not None:
            try:
                transport.abort()
            except RuntimeError:
                # Its event loop is closed (asyncio.run() per call, or the client moved to
                # another loop) and will never run the transport's own close: hang up now,
                # so the server stops at once, and close the socket here, else it is left
                # to the garbage collector with a ResourceWarning.
                _close_orphan(transport)


def _close_orphan(transport: asyncio.BaseTransport) -> None:
    """Close the socket of a transport whose event loop is closed. asyncio's selector
    transports keep it as ``_sock`` (and warn at collection while it is set); other loops'
    transports (uvloop) only get the hang-up."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    raw = getattr(transport, "_sock", None)
    if isinstance(raw, socket.socket):
        transport._sock = None  # type: ignore[attr-defined]
        raw.close()

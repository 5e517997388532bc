"""Asyncio HTTP/1.1 transport on ``asyncio.Protocol``, with a keep-alive pool.

The protocol logic lives in :mod:`.request` and :mod:`.response` (sans-I/O). Each
connection is an :class:`~.aio_connection.AsyncConnection` protocol: ``data_received`` pushes
bytes straight into the response parser (no stream reader, no intermediate buffer) and wakes
the one coroutine waiting on that connection through a bare future. Timeouts cost no task and
no ``wait_for``: each connection keeps at most one ``loop.call_at`` timer, which is re-armed
lazily: a wait only moves the expiry, and the timer, when it fires early, re-arms itself for
the new expiry, so a stream of thousands of reads creates a handful of timer handles, not one
per read. Waits are bounded by ``min(idle, deadline - now)`` as in the sync shell. Idle pooled
connections stay registered with the loop, so a server closing one (RFC 9112 section 9.3.1)
removes it from the pool at once; what follows a failure before the response head is whole
(a stale connection replaced and the request resent, an early answer heard) is decided in
:mod:`.attempt`, as for the sync shell. The pool is per origin, LIFO, capped
at ``max_connections`` sockets, and callers waiting for a slot are served first in, first out
(a freed connection is handed to the oldest waiter directly). Cancellation is never converted:
a cancelled wait aborts its connection and re-raises ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from time import monotonic
from typing import Any, cast

from lmlink._errors import ConfigurationError, LMLinkError

from .aio_connection import AsyncConnection
from .attempt import Step, after_error
from .common import (
    DEFAULT_LIMIT,
    ResponseBase,
    Timeouts,
    TransportSettings,
    connect_budget,
    connect_error,
    forget_after_fork,
    readable,
    timeout_error,
    within,
)
from .request import Target, build_request, parse_url
from .response import ResponseParser

__all__ = ["AsyncResponse", "AsyncTransport", "LoopPools"]

_READ_BUFFER = 64 * 1024
_CLOSED = object()  # a pool waiter's result when the transport is closed under it
_Key = tuple[str, str, int]
# What a pool waiter is handed: a connection, a slot (None), a timeout (False) or _CLOSED.
_Handoff = AsyncConnection | bool | object | None


class AsyncResponse(ResponseBase[AsyncConnection]):
    """A response whose head has arrived; the body is read on demand."""

    __slots__ = ()

    async def read(self, limit: int = DEFAULT_LIMIT) -> bytes:
        """The whole (rest of the) body; over ``limit`` bytes raises ResponseTooLargeError."""
        parser = self._parser
        parser.limit = limit
        try:
            self._check(limit)
            while not parser.done:
                await self._live().wait(self._timeouts, self._start)
                self._check(limit)
            data = parser.take()
        except BaseException:
            self._close()
            raise
        self._close()
        return data

    def aiter_bytes(self) -> AsyncResponse:
        """The body as it arrives, de-chunked and decoded; never yields ``b""``.

        The response is its own async iterator (not an async generator: abandoning the loop
        needs no finaliser; ``aclose`` does the cleanup).
        """
        return self

    def __aiter__(self) -> AsyncResponse:
        return self

    async def __anext__(self) -> bytes:
        parser = self._parser
        while True:
            if parser.body:
                data = parser.take()
                conn = self._conn
                if conn is not None:
                    if parser.done:
                        self._close()
                    elif conn.paused:
                        conn.paused = False
                        conn.transport.resume_reading()
                return data
            if parser.done:
                self._close()
                raise StopAsyncIteration
            try:
                await self._live().wait(self._timeouts, self._start)
            except BaseException:
                self._close()
                raise

    async def discard_rest(self, grace: float) -> None:
        """Read and drop the rest of the body for at most ``grace`` seconds, so that the
        connection can go back to the pool; past that, or on any error, it is closed."""
        parser = self._parser
        timeouts = within(self._timeouts, grace)
        try:
            while not parser.done and parser.keep_alive:
                parser.take()
                await self._live().wait(timeouts, self._start)
        except LMLinkError:
            pass
        finally:
            parser.take()
            self._close()

    async def aclose(self) -> None:
        """Give the connection back if the body was read whole, else close the socket."""
        self._close()

    async def __aenter__(self) -> AsyncResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()


class AsyncTransport(TransportSettings):
    """Asyncio HTTP/1.1 client with a keep-alive pool, for one event loop (a client that
    several loops use has one per loop: :class:`LoopPools`)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._read_view = memoryview(bytearray(_READ_BUFFER))
        self._idle: dict[_Key, list[AsyncConnection]] = {}
        self._total = 0  # open connections, busy or idle, plus connects under way
        self._waiters: deque[tuple[_Key, asyncio.Future[_Handoff]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> AsyncResponse:
        """Send a request; return once the status line and headers have arrived."""
        target = parse_url(url)
        data = build_request(method, target, headers, body)
        if asyncio.get_running_loop() is not self._loop:
            self._rebind()
        start = monotonic()
        conn = self._take_idle(target.key)
        if conn is None:
            conn = await self._acquire(target, timeouts, start)
        while True:
            parser = ResponseParser(target.where, method == "HEAD", self._max_body, self._redact)
            conn.parser = parser
            try:
                conn.transport.write(data)
                while conn.write_paused and not parser.head_done:
                    await conn.wait(timeouts, start, writing=True)
                while not parser.head_done:
                    await conn.wait(timeouts, start)
            except LMLinkError as exc:
                unsent = bool(conn.transport.get_write_buffer_size())
                step = after_error(exc, conn.used, parser, unsent=unsent)
                if step is Step.ANSWERED:  # the body is handed out first, then conn.exc
                    conn.used += 1
                    return AsyncResponse(self, conn, parser, timeouts, start)
                if step is Step.RESEND:
                    self._replace(conn)
                    conn = await self._connect_in_slot(target, timeouts, start)
                    continue
                self._discard(conn)
                raise
            except BaseException:
                self._discard(conn)
                raise
            conn.used += 1
            return AsyncResponse(self, conn, parser, timeouts, start)

    async def aclose(self) -> None:
        """Close every pooled connection; responses still open close theirs when done."""
        self.close_now()
        # Each aborted transport closes its socket in a callback the loop runs next: let it
        # run, so that no socket outlives this call (a loop closed right after never would).
        await asyncio.sleep(0)

    def close_now(self) -> None:
        """:meth:`aclose`, callable from the event loop's own callbacks."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.idle = False
                conn.dead = True
                conn.close()
                self._total -= 1
        self._idle.clear()
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(_CLOSED)

    async def __aenter__(self) -> AsyncTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- pool -------------------------------------------------------------------------------

    def _rebind(self) -> None:
        """First use, or use from another event loop: connections of the old one are lost."""
        for idle in self._idle.values():
            for conn in idle:
                conn.idle = False
                conn.close()
        self._idle.clear()
        self._waiters.clear()
        self._total = 0
        self._loop = asyncio.get_running_loop()

    def _take_idle(self, key: _Key) -> AsyncConnection | None:
        if self._closed:
            raise ConfigurationError("this transport (client) is closed")
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            conn.idle = False
            # Polled too: the loop may not have run since bytes arrived (a loop driven by
            # run_until_complete between calls), and stray bytes must not be read as ours.
            if not conn.lost and not readable(conn.transport.get_extra_info("socket")):
                return conn
            self._discard(conn)
        return None

    async def _acquire(self, target: Target, timeouts: Timeouts, start: float) -> AsyncConnection:
        if self._total < self._max:
            self._total += 1
            return await self._connect_in_slot(target, timeouts, start)
        victim = next((c for idle in self._idle.values() for c in idle[:1]), None)
        if victim is not None:  # full of idle connections to other origins: take a slot
            self._idle[victim.key].remove(victim)
            victim.idle = False
            self._replace(victim)
            return await self._connect_in_slot(target, timeouts, start)
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        fut: asyncio.Future[_Handoff] = loop.create_future()
        self._waiters.append((target.key, fut))
        # Only the call's deadline bounds the wait for a free connection: without one, calls
        # queued beyond max_connections wait their turn (a normal use of a shared client).
        deadline = timeouts.deadline
        timer = None
        if deadline is not None:
            timer = loop.call_later(deadline - monotonic(), _pool_timeout, fut)
        try:
            got = await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if got is False:
            assert deadline is not None
            raise timeout_error("pool", deadline - start, target.where, False)
        if got is _CLOSED:
            raise ConfigurationError("this transport (client) is closed")
        if isinstance(got, AsyncConnection):
            if not got.lost:
                return got
            self._replace(got)
        return await self._connect_in_slot(target, timeouts, start)

    def _give_back(self, got: _Handoff) -> None:
        if isinstance(got, AsyncConnection):
            self._release(got)
        elif got is None:
            self._free_slot()

    async def _connect_in_slot(
        self, target: Target, timeouts: Timeouts, start: float
    ) -> AsyncConnection:
        try:
            return await self._connect(target, timeouts, start)
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self, target: Target, timeouts: Timeouts, start: float) -> AsyncConnection:
        wait, phase, limit = connect_budget(timeouts, start)
        if wait is not None and wait <= 0:
            raise timeout_error(phase, limit, target.where, False)
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        conn = AsyncConnection(self, loop, target)
        context = None
        if target.https:
            context = self._ssl_context()
        task = loop.create_task(
            loop.create_connection(
                lambda: conn,
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context else None,
            )
        )
        expired: list[bool] = []
        timer = None
        if wait is not None:
            timer = loop.call_later(wait, _connect_timeout, task, expired)
        try:
            await task
        except asyncio.CancelledError as exc:
            if task.done() and not task.cancelled() and task.exception() is None:
                conn.close()  # connected just as we were cancelled: do not leak it
            if expired and not _cancelling():
                raise timeout_error(phase, limit, target.where, False) from exc
            raise
        except (OSError, ValueError) as exc:
            raise connect_error(exc, target.where) from exc
        finally:
            if timer is not None:
                timer.cancel()
        return conn

    def _release(self, conn: AsyncConnection) -> None:
        conn.parser = None
        if conn.lost or self._closed or conn.dead:
            self._discard(conn)
            return
        waiters = self._waiters
        while waiters:
            key, fut = waiters.popleft()
            if fut.done():
                continue
            if key == conn.key:
                fut.set_result(conn)
            else:  # its slot goes to a caller waiting for another origin
                self._replace(conn)
                fut.set_result(None)
            return
        conn.idle = True
        self._idle.setdefault(conn.key, []).append(conn)

    def _discard(self, conn: AsyncConnection) -> None:
        """Close ``conn`` and free its slot (once)."""
        if conn.dead:
            return
        conn.dead = True
        conn.close()
        self._free_slot()

    def _replace(self, conn: AsyncConnection) -> None:
        """Close ``conn`` but keep its slot for the caller."""
        conn.dead = True
        conn.close()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to it directly
                return
        self._total -= 1

    def _lost_idle(self, conn: AsyncConnection) -> None:
        """The server closed a connection while it idled in the pool."""
        if conn.idle:
            conn.idle = False
            self._idle[conn.key].remove(conn)
            self._discard(conn)


class LoopPools:
    """One :class:`AsyncTransport` (pool) per event loop, for a client that several loops
    use: connections belong to the loop that opened them, so two loops (in two threads, or
    one after another) never share one, and never read each other's answers. A pool whose
    loop has closed is dropped when another loop first calls; after ``fork()`` the child
    starts with none.
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._pools: dict[asyncio.AbstractEventLoop, AsyncTransport] = {}
        # The last (loop, pool) pair, one tuple so that a thread never reads half of it.
        self._last: tuple[asyncio.AbstractEventLoop, AsyncTransport] | None = None
        self._closed = False
        forget_after_fork(self)

    def current(self) -> AsyncTransport:
        """The running loop's pool (made on first use)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last[1]
        with self._lock:
            if self._closed:
                raise ConfigurationError("this transport (client) is closed")
            pool = self._pools.get(loop)
            if pool is None:
                for old, spent in list(self._pools.items()):
                    if old.is_closed():  # its sockets can only be shut down now
                        del self._pools[old]
                        spent.close_now()
                pool = self._pools[loop] = AsyncTransport(**self._settings)
            self._last = (loop, pool)
        return pool

    async def aclose(self) -> None:
        """Close every loop's pooled connections, each on its own loop, and return once
        their sockets are closed: a pool of a loop running in another thread is closed by
        that loop; one of a loop that idles (not running: driven by ``run_until_complete``
        between calls) is closed by running that loop for a moment in a helper thread."""
        here = asyncio.get_running_loop()
        with self._lock:
            self._closed = True
            pools, self._pools, self._last = self._pools, {}, None
        for loop, pool in pools.items():
            if loop is here:
                await pool.aclose()
            elif loop.is_closed():
                pool.close_now()  # its sockets can only be shut down now
            elif loop.is_running():
                await _close_on_running(loop, pool)
            else:
                helper = threading.Thread(target=_close_on_idle, args=(loop, pool))
                helper.start()
                helper.join()  # one loop iteration: no need to hand this loop back meanwhile

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pools = {}
        self._last = None


# How long aclose() waits for another thread's loop to close its pool (it takes one loop
# iteration; a loop blocked by its own code must not block the close forever).
_CLOSE_WAIT = 1.0


async def _close_on_running(loop: asyncio.AbstractEventLoop, pool: AsyncTransport) -> None:
    """Close ``pool`` on ``loop``, running in another thread; wait until it is done."""
    try:
        done = asyncio.run_coroutine_threadsafe(pool.aclose(), loop)
    except RuntimeError:  # the loop closed in the meantime
        pool.close_now()
        return
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.wrap_future(done), _CLOSE_WAIT)


def _close_on_idle(loop: asyncio.AbstractEventLoop, pool: AsyncTransport) -> None:
    """Close ``pool`` by running its loop, which is not running, in this thread; if its
    owner starts it meanwhile, the close is left to it, and a closed loop gets the close
    of an orphan."""
    try:
        loop.run_until_complete(pool.aclose())
    except RuntimeError:  # running again, or closed, in the meantime
        try:
            loop.call_soon_threadsafe(pool.close_now)
        except RuntimeError:
            pool.close_now()


def _pool_timeout(fut: asyncio.Future[_Handoff]) -> None:
    if not fut.done():
        fut.set_result(False)


def _connect_timeout(task: asyncio.Task[Any], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


def _cancelling() -> int:
    """How many cancellations of the current task are pending (3.11+; else 0)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0

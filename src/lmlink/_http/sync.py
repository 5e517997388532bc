"""Blocking HTTP/1.1 transport on plain ``socket`` (and ``ssl``), with a keep-alive pool.

The protocol logic lives in :mod:`.request` and :mod:`.response` (sans-I/O); this shell
only moves bytes: :meth:`SyncTransport.request` takes a pooled connection (or opens one),
writes the request with one ``sendall`` and reads until the parser has the response
head; :class:`Response` reads the rest on demand. Every wait is bounded by
``min(idle, deadline - now)`` through the socket's own timeout (no extra threads or
selectors). A finished response hands its connection straight back to the pool; an abandoned
one closes its socket, which is how a server learns to stop generating. The pool is per
origin, LIFO (the most recently used connection is the likeliest to be alive), capped at
``max_connections`` open sockets across origins, and thread-safe. What follows a
failure before the response head is whole (a stale pooled connection is replaced and the
request sent once more; a server that answered before it read the whole request, a proxy's
413, is heard rather than reported as a broken pipe) is decided in :mod:`.attempt`; this
loop only carries it out. Every pooled connection is polled before reuse, and one with EOF or
stray bytes waiting is replaced; a forked child starts with an empty pool (never the parent's
sockets).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from time import monotonic
from typing import Any

from lmlink._errors import APIConnectionError, ConfigurationError, LMLinkError

from .attempt import EARLY_ANSWER_GRACE, Step, after_error, hear_early_answer
from .common import (
    DEFAULT_LIMIT,
    ResponseBase,
    Timeouts,
    TransportSettings,
    budget,
    connect_budget,
    connect_error,
    forget_after_fork,
    io_error,
    readable,
    timeout_error,
    within,
)
from .request import Target, build_request, parse_url
from .response import ResponseParser

__all__ = ["Response", "SyncTransport"]

_RECV = 64 * 1024  # below glibc's mmap threshold: no mmap/munmap per read


class _Conn:
    __slots__ = ("key", "sock", "timeout", "used")

    def __init__(self, sock: socket.socket, key: tuple[str, str, int]) -> None:
        self.sock = sock
        self.key = key
        self.used = 0  # responses read on it: > 0 means it came from the pool
        self.timeout: float | None = -1.0  # the socket's current timeout, to skip settimeout

    def wait_for(self, wait: float | None) -> None:
        if wait != self.timeout:
            self.sock.settimeout(wait)
            self.timeout = wait


class Response(ResponseBase["_Conn"]):
    """A response whose head has arrived; the body is read on demand."""

    __slots__ = ()

    def read(self, limit: int = DEFAULT_LIMIT) -> bytes:
        """The whole (rest of the) body; over ``limit`` bytes raises ResponseTooLargeError."""
        parser = self._parser
        parser.limit = limit
        try:
            self._check(limit)
            while not parser.done:
                _receive(self._live(), parser, self._timeouts, self._start)
                self._check(limit)
            data = parser.take()
        except BaseException:
            self._close()
            raise
        self._close()
        return data

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives, de-chunked and decoded; never yields ``b""``."""
        parser = self._parser
        while True:
            if parser.body:
                data = parser.take()
                if parser.done:
                    self._close()
                yield data
            elif parser.done:
                self._close()
                return
            else:
                try:
                    _receive(self._live(), parser, self._timeouts, self._start)
                except BaseException:
                    self._close()
                    if parser.body:  # what arrived before the failure, then the failure
                        yield parser.take()
                    raise

    def discard_rest(self, grace: float) -> None:
        """Read and drop the rest of the body for at most ``grace`` seconds, so that the
        connection can go back to the pool; past that, or on any error, it is closed."""
        parser = self._parser
        timeouts = within(self._timeouts, grace)
        try:
            while not parser.done and parser.keep_alive:
                parser.take()
                _receive(self._live(), parser, timeouts, self._start)
        except LMLinkError:
            pass
        finally:
            parser.take()
            self._close()

    def close(self) -> None:
        """Give the connection back if the body was read whole, else close the socket."""
        self._close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()


def _receive(conn: _Conn, parser: ResponseParser, timeouts: Timeouts, start: float) -> None:
    """One read from the socket into the parser, bounded by the idle and total timeouts."""
    wait, phase, limit = budget(timeouts, start)
    if wait is not None and wait <= 0:
        raise timeout_error(phase, limit, parser.where, True)
    conn.wait_for(wait)
    try:
        data = conn.sock.recv(_RECV)
    except TimeoutError as exc:
        raise timeout_error(phase, limit, parser.where, True) from exc
    except OSError as exc:
        raise io_error(exc, parser.where, True, parser.received) from exc
    if data:
        parser.feed(data)
    else:
        parser.feed_eof()


def _send(conn: _Conn, data: bytes, where: str, timeouts: Timeouts, start: float) -> None:
    # sendall applies the socket timeout to the whole call: close enough to "each write
    # wait" for request bodies, which fit in the socket buffer nearly always.
    wait, phase, limit = budget(timeouts, start)
    if wait is not None and wait <= 0:
        raise timeout_error(phase, limit, where, False, writing=True)
    conn.wait_for(wait)
    try:
        conn.sock.sendall(data)
    except TimeoutError as exc:
        raise timeout_error(phase, limit, where, False, writing=True) from exc
    except OSError as exc:
        raise io_error(exc, where, False, False) from exc


def _answered_early(conn: _Conn, parser: ResponseParser, timeouts: Timeouts, start: float) -> bool:
    """After a failed send: read what the server answered before it stopped reading into
    ``parser``; whether a whole head arrived (see :mod:`.attempt`)."""
    try:
        while not parser.head_done:
            _receive(conn, parser, within(timeouts, EARLY_ANSWER_GRACE), start)
    except LMLinkError:
        return False
    return True


class SyncTransport(TransportSettings):
    """Blocking HTTP/1.1 client with a keep-alive pool; safe to share between threads."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._total = 0  # open sockets, busy or idle, plus connects under way
        self._closed = False
        forget_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: start with an empty pool. The inherited sockets are closed
        in this process only (the parent's connections stay open), and the lock is new (a
        thread of the parent may have held it at the fork)."""
        conns = [c for idle in self._idle.values() for c in idle]
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._idle = {}
        self._total = 0
        for conn in conns:
            conn.sock.close()  # this process's descriptor only: no shutdown, no TLS goodbye

    def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> Response:
        """Send a request; return once the status line and headers have arrived."""
        target = parse_url(url)
        data = build_request(method, target, headers, body)
        start = monotonic()
        conn = self._acquire(target, timeouts, start)
        while True:
            parser = ResponseParser(target.where, method == "HEAD", self._max_body, self._redact)
            try:
                try:
                    _send(conn, data, target.where, timeouts, start)
                except APIConnectionError as exc:
                    if not hear_early_answer(exc) or not _answered_early(
                        conn, parser, timeouts, start
                    ):
                        raise
                while not parser.head_done:
                    _receive(conn, parser, timeouts, start)
            except LMLinkError as exc:
                step = after_error(exc, conn.used, parser)
                if step is Step.ANSWERED:  # the body is handed out first, then resp._error
                    resp = Response(self, conn, parser, timeouts, start)
                    resp._error = exc
                    conn.used += 1
                    return resp
                if step is Step.RESEND:
                    conn.sock.close()
                    try:
                        conn = self._connect(target, timeouts, start)
                    except BaseException:
                        self._free_slot()
                        raise
                    continue
                self._discard(conn)
                raise
            except BaseException:
                self._discard(conn)
                raise
            conn.used += 1
            return Response(self, conn, parser, timeouts, start)

    def close(self) -> None:
        """Close every pooled connection; responses still open close theirs when done."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
            self._total -= len(conns)
            self._freed.notify_all()
        for conn in conns:
            conn.sock.close()

    def __enter__(self) -> SyncTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- pool -----------------------------------------------------------------------------

    def _acquire(self, target: Target, timeouts: Timeouts, start: float) -> _Conn:
        key = target.key
        # Only the call's deadline bounds the wait for a free connection: without one, calls
        # queued beyond max_connections wait their turn (a normal use of a shared client).
        deadline = timeouts.deadline
        with self._lock:
            while True:
                if self._closed:
                    raise ConfigurationError("this transport (client) is closed")
                idle = self._idle.get(key)
                if idle:
                    conn: _Conn | None = idle.pop()
                    break
                if self._total < self._max:
                    self._total += 1
                    conn = None
                    break
                victim = next((c for lst in self._idle.values() for c in lst[:1]), None)
                if victim is not None:
                    # Full of idle connections to other origins: close the oldest one and
                    # take its place.
                    self._idle[victim.key].remove(victim)
                    victim.sock.close()
                    conn = None
                    break
                wait = None if deadline is None else deadline - monotonic()
                if wait is not None and wait <= 0:
                    assert deadline is not None
                    raise timeout_error("pool", deadline - start, target.where, False)
                self._freed.wait(wait)
        if conn is not None:
            if not readable(conn.sock):
                return conn
            conn.sock.close()  # EOF (or stray bytes) while idle: replace it, same slot
        try:
            return self._connect(target, timeouts, start)
        except BaseException:
            self._free_slot()
            raise

    def _connect(self, target: Target, timeouts: Timeouts, start: float) -> _Conn:
        wait, phase, limit = connect_budget(timeouts, start)
        if wait is not None and wait <= 0:
            raise timeout_error(phase, limit, target.where, False)
        began = monotonic()
        try:
            sock = socket.create_connection((target.host, target.port), wait)
        except TimeoutError as exc:
            raise timeout_error(phase, limit, target.where, False) from exc
        except (OSError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
            raise connect_error(exc, target.where) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.https:
                if wait is not None:  # the handshake gets what the TCP connect left over
                    sock.settimeout(max(wait - (monotonic() - began), 1e-3))
                sock = self._ssl_context().wrap_socket(sock, server_hostname=target.host)
        except TimeoutError as exc:
            sock.close()
            raise timeout_error(phase, limit, target.where, False) from exc
        except OSError as exc:
            sock.close()
            raise connect_error(exc, target.where) from exc
        except BaseException:
            sock.close()
            raise
        return _Conn(sock, target.key)

    def _release(self, conn: _Conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.setdefault(conn.key, []).append(conn)
                self._freed.notify()
                return
            self._total -= 1
        conn.sock.close()

    def _discard(self, conn: _Conn) -> None:
        conn.sock.close()
        self._free_slot()

    def _free_slot(self) -> None:
        with self._lock:
            self._total -= 1
            self._freed.notify()

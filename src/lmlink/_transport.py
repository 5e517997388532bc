"""Blocking HTTP/1.1 transport on plain ``socket`` (and ``ssl``), with a keep-alive pool.

The protocol logic lives in :mod:`lmlink._http` (sans-I/O); this shell only moves bytes:
:meth:`SyncTransport.request` takes a pooled connection (or opens one), writes the request
with one ``sendall`` and reads until the parser has the response head; :class:`Response`
reads the rest on demand. Every wait is bounded by ``min(idle, deadline - now)`` through the
socket's own timeout (no extra threads or selectors). A finished response hands its
connection straight back to the pool; an abandoned one closes its socket, which is how a
server learns to stop generating. The pool is per origin, LIFO (the most recently used
connection is the likeliest to be alive), capped at ``max_connections`` open sockets across
origins, and thread-safe. A reused connection found dead before any response byte (the
server closed it while it idled, RFC 9112 section 9.3.1) is replaced and the request sent
once more; connections idle for over a second are polled for EOF before reuse.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    ResponseTooLargeError,
)
from ._http import ResponseParser, Target, build_request, parse_url

if TYPE_CHECKING:
    import ssl

__all__ = ["DEFAULT_LIMIT", "Response", "SyncTransport", "Timeouts", "make_ssl_context"]

_C = TypeVar("_C")
_C_contra = TypeVar("_C_contra", contravariant=True)

DEFAULT_LIMIT = 64 * 1024 * 1024
_RECV = 64 * 1024  # below glibc's mmap threshold: no mmap/munmap per read
_REFUSED = f"[Errno {errno.ECONNREFUSED}]"
_PEEK_AFTER = 1.0  # seconds idle after which a pooled socket is polled for EOF before reuse


class Timeouts(NamedTuple):
    """How long the transport may wait; ``None`` means no limit."""

    connect: float | None  # TCP connect + TLS handshake
    idle: float | None  # longest wait for any byte (each read wait; also each write wait)
    deadline: float | None  # absolute time.monotonic() value; no wait goes past it


def make_ssl_context(verify: bool | ssl.SSLContext) -> ssl.SSLContext:
    """The context for ``verify``: the system's trust store, none at all, or the one given.
    (``ssl`` is imported here, on the first https request: it is slow to import.)"""
    import ssl

    if isinstance(verify, ssl.SSLContext):
        return verify
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _budget(timeouts: Timeouts, start: float) -> tuple[float | None, str, float]:
    """(how long the next wait may last, the phase that will be to blame, that limit)."""
    idle = timeouts.idle
    deadline = timeouts.deadline
    if deadline is not None:
        left = deadline - monotonic()
        if idle is None or left < idle:
            if left <= 0:
                return 0.0, "total", deadline - start
            return left, "total", deadline - start
    return idle, "idle", idle or 0.0


def _connect_budget(timeouts: Timeouts, start: float) -> tuple[float | None, str, float]:
    connect = timeouts.connect
    deadline = timeouts.deadline
    if deadline is not None:
        left = deadline - monotonic()
        if connect is None or left < connect:
            return left, "total", deadline - start
    return connect, "connect", connect or 0.0


class _Conn:
    __slots__ = ("idle_since", "key", "sock", "timeout", "used")

    def __init__(self, sock: socket.socket, key: tuple[str, str, int]) -> None:
        self.sock = sock
        self.key = key
        self.used = 0  # responses read on it: > 0 means it came from the pool
        self.timeout: float | None = -1.0  # the socket's current timeout, to skip settimeout
        self.idle_since = 0.0

    def wait_for(self, wait: float | None) -> None:
        if wait != self.timeout:
            self.sock.settimeout(wait)
            self.timeout = wait


class _Pool(Protocol[_C_contra]):
    def _release(self, conn: _C_contra) -> None: ...
    def _discard(self, conn: _C_contra) -> None: ...


class ResponseBase(Generic[_C]):
    """What the sync and async responses share: the head, the size cap, and handing the
    connection back (to the pool if the body was read whole, else closed)."""

    __slots__ = (
        "_conn",
        "_parser",
        "_pool",
        "_start",
        "_timeouts",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(
        self, pool: _Pool[_C], conn: _C, parser: ResponseParser, timeouts: Timeouts, start: float
    ) -> None:
        self.status = parser.status
        self.reason = parser.reason
        self.http_version = parser.http_version
        self.headers = parser.headers
        self._pool = pool
        self._conn: _C | None = conn
        self._parser = parser
        self._timeouts = timeouts
        self._start = start
        if parser.done:
            self._close()

    def _check(self, limit: int) -> None:
        parser = self._parser
        size = parser.content_length
        if parser.pending > limit or (size is not None and size > limit and not parser.decoder):
            raise too_large(parser.where, limit)

    def _live(self) -> _C:
        conn = self._conn
        if conn is None:
            raise APIConnectionError(
                "the response was closed before its body was read",
                request_sent=True,
                reason="closed",
            )
        return conn

    def _close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            parser = self._parser
            if parser.done and parser.keep_alive:
                self._pool._release(conn)
            else:
                self._pool._discard(conn)


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
                    raise

    def close(self) -> None:
        """Give the connection back if the body was read whole, else close the socket."""
        self._close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()


def _receive(conn: _Conn, parser: ResponseParser, timeouts: Timeouts, start: float) -> None:
    """One read from the socket into the parser, bounded by the idle and total timeouts."""
    wait, phase, limit = _budget(timeouts, start)
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
    wait, phase, limit = _budget(timeouts, start)
    if wait is not None and wait <= 0:
        raise timeout_error(phase, limit, where, False, writing=True)
    conn.wait_for(wait)
    try:
        conn.sock.sendall(data)
    except TimeoutError as exc:
        raise timeout_error(phase, limit, where, False, writing=True) from exc
    except OSError as exc:
        raise io_error(exc, where, False, False) from exc


class SyncTransport:
    """Blocking HTTP/1.1 client with a keep-alive pool; safe to share between threads."""

    def __init__(
        self,
        *,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 256,
        max_body: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        self._max_body = max_body  # the decompressed-size cap of every response body
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._max = max_connections
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._total = 0  # open sockets, busy or idle, plus connects under way
        self._closed = False

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
            parser = ResponseParser(target.where, method == "HEAD", self._max_body)
            try:
                _send(conn, data, target.where, timeouts, start)
                while not parser.head_done:
                    _receive(conn, parser, timeouts, start)
            except APIConnectionError as exc:
                if conn.used and not parser.received and exc.reason in ("closed", "reset"):
                    # A kept-alive connection the server had already closed: nothing of
                    # this request was processed, so send it again on a fresh one.
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
                deadline = timeouts.deadline
                wait = None if deadline is None else deadline - monotonic()
                if wait is not None and wait <= 0:
                    assert deadline is not None
                    raise timeout_error("pool", deadline - start, target.where, False)
                self._freed.wait(wait)
        if conn is not None:
            if monotonic() - conn.idle_since < _PEEK_AFTER or not _readable(conn.sock):
                return conn
            conn.sock.close()  # EOF (or stray bytes) while idle: replace it, same slot
        try:
            return self._connect(target, timeouts, start)
        except BaseException:
            self._free_slot()
            raise

    def _connect(self, target: Target, timeouts: Timeouts, start: float) -> _Conn:
        wait, phase, limit = _connect_budget(timeouts, start)
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
                if self._ssl is None:
                    self._ssl = make_ssl_context(self._verify)
                if wait is not None:  # the handshake gets what the TCP connect left over
                    sock.settimeout(max(wait - (monotonic() - began), 1e-3))
                sock = self._ssl.wrap_socket(sock, server_hostname=target.host)
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
        conn.idle_since = monotonic()
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


def _readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read: for a pooled connection, EOF or junk."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


# -- errors, shared with the async shell ----------------------------------------------------


def _secs(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def timeout_error(
    phase: str, limit: float, where: str, request_sent: bool, *, writing: bool = False
) -> APITimeoutError:
    """The error for a wait that ran out: ``phase`` is connect, idle, total or pool."""
    if phase == "connect":
        text = f"could not connect to {where} within {_secs(limit)} s (connect timeout)"
    elif phase == "pool":
        text = (
            f"no connection to {where} became free within {_secs(limit)} s "
            "(the call's deadline; all max_connections are busy)"
        )
    elif phase == "total":
        doing = "sending to" if writing else "waiting for"
        text = (
            f"the call's deadline passed while {doing} {where} "
            f"({_secs(limit)} s were left when this request started)"
        )
    elif writing:
        text = f"could not send to {where} for {_secs(limit)} s (idle timeout)"
    else:
        text = f"no data from {where} for {_secs(limit)} s (idle timeout)"
    return APITimeoutError(
        text, phase=phase, timeout=limit, request_sent=request_sent, reason="timeout"
    )


def _ssl_module() -> Any:
    """``ssl`` if anything imported it (no TLS error can exist otherwise), else None."""
    return sys.modules.get("ssl")


def connect_error(exc: Exception, where: str) -> APIConnectionError:
    """The error for a failed connect or TLS handshake (nothing was sent)."""
    ssl = _ssl_module()
    if not isinstance(exc, OSError):  # UnicodeError from IDNA: a host name that cannot exist
        reason, text = "dns", f"invalid host name in {where}: {exc}"
    elif ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        reason = "tls"
        text = (
            f"the TLS certificate of {where} did not verify: {exc.verify_message} "
            "(pass verify=False, or an ssl.SSLContext that trusts it)"
        )
    elif ssl is not None and isinstance(exc, ssl.SSLError):
        reason, text = "tls", f"TLS handshake with {where} failed: {exc}"
    elif isinstance(exc, socket.gaierror):
        reason, text = "dns", f"could not resolve the host of {where}: {exc.strerror or exc}"
    elif isinstance(exc, ConnectionRefusedError) or _REFUSED in str(exc):
        # asyncio joins the errors of every address it tried into one plain OSError.
        reason = "refused"
        text = f"could not connect to {where}: connection refused (is the server running?)"
    elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        reason, text = "reset", f"{where} reset the connection while it was being set up"
    else:
        reason, text = "", f"could not connect to {where}: {exc.strerror or exc}"
    return APIConnectionError(text, request_sent=False, reason=reason)


def io_error(exc: OSError, where: str, request_sent: bool, received: bool) -> APIConnectionError:
    """The error for a send or receive that failed on an open connection."""
    when = "in the middle of the response" if received else "before it answered"
    ssl = _ssl_module()
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return APIConnectionError(
            f"TLS error on the connection to {where} {when}: {exc}",
            request_sent=request_sent,
            reason="tls",
        )
    return APIConnectionError(
        f"the connection to {where} broke {when}: {exc.strerror or exc}",
        request_sent=request_sent,
        reason="reset",
    )


def too_large(where: str, limit: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"the response body from {where} is over {limit} bytes")

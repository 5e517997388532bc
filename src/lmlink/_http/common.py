"""What the blocking and asyncio transport shells share.

:class:`Timeouts` and the wait budget (``min(idle, deadline - now)``), the TLS context,
:class:`ResponseBase` (the parsed head, the size cap, handing a connection back to its
pool), the builders of every transport error, so both shells word their failures the
same way, and fork safety (:func:`forget_after_fork`). The shells themselves are
:mod:`lmlink._http.sync` and :mod:`lmlink._http.aio`.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import weakref
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from lmlink._errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    ResponseTooLargeError,
)

from .response import ResponseParser

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DEFAULT_LIMIT",
    "ResponseBase",
    "Timeouts",
    "TransportSettings",
    "budget",
    "connect_budget",
    "connect_error",
    "forget_after_fork",
    "io_error",
    "make_ssl_context",
    "readable",
    "timeout_error",
    "too_large",
    "within",
]

_C = TypeVar("_C")
_C_contra = TypeVar("_C_contra", contravariant=True)

DEFAULT_LIMIT = 64 * 1024 * 1024
_REFUSED = f"[Errno {errno.ECONNREFUSED}]"


class Timeouts(NamedTuple):
    """How long the transport may wait; ``None`` means no limit."""

    connect: float | None  # TCP connect + TLS handshake
    idle: float | None  # longest wait for any byte (each read wait; also each write wait)
    deadline: float | None  # absolute time.monotonic() value; no wait goes past it


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_FORK_AWARE: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_FORK_AWARE):
        pool._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forget_after_fork(pool: _ForkAware) -> None:
    """Have ``pool._after_fork()`` called in every child process forked from now on: a
    child must never read or write the parent's pooled sockets (they are the same
    connections, so the two would read each other's answers)."""
    _FORK_AWARE.add(pool)


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


def readable(sock: Any) -> bool:
    """Whether an idle socket has something to read: for a pooled connection, EOF or
    stray bytes (a server that wrote more than its response), either way not reusable."""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def within(timeouts: Timeouts, seconds: float) -> Timeouts:
    """``timeouts`` with the deadline moved in to at most ``seconds`` from now."""
    deadline = monotonic() + seconds
    if timeouts.deadline is not None:
        deadline = min(deadline, timeouts.deadline)
    return timeouts._replace(deadline=deadline)


def budget(timeouts: Timeouts, start: float) -> tuple[float | None, str, float]:
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


def connect_budget(timeouts: Timeouts, start: float) -> tuple[float | None, str, float]:
    connect = timeouts.connect
    deadline = timeouts.deadline
    if deadline is not None:
        left = deadline - monotonic()
        if connect is None or left < connect:
            return left, "total", deadline - start
    return connect, "connect", connect or 0.0


class TransportSettings:
    """What both transport shells are made with, checked once: the TLS setting (its
    context made on the first https request), the connection cap, the decompressed-size cap
    of every body, and what blanks the client's secrets in quoted server bytes."""

    def __init__(
        self,
        *,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 256,
        max_body: int | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        self._max_body = max_body
        self._redact = redact
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._max = max_connections

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = make_ssl_context(self._verify)
        return self._ssl


class _Pool(Protocol[_C_contra]):
    def _release(self, conn: _C_contra) -> None: ...
    def _discard(self, conn: _C_contra) -> None: ...


class ResponseBase(Generic[_C]):
    """What the sync and async responses share: the head, the size cap, and handing the
    connection back (to the pool if the body was read whole, else closed)."""

    __slots__ = (
        "_conn",
        "_error",
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
        # A failure that came in the same read as the head (a broken frame after the first
        # body bytes): raised once the body that preceded it has been handed out.
        self._error: Exception | None = None
        if parser.done:
            self._close()

    def _check(self, limit: int) -> None:
        parser = self._parser
        size = parser.content_length
        if parser.pending > limit or (size is not None and size > limit and not parser.decoder):
            raise too_large(parser.where, limit)

    def _live(self) -> _C:
        if self._error is not None:
            raise self._error
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


# -- errors


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
            "(all max_connections are busy)"
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

"""Transports through an HTTP(S) proxy, built on httpx (``pip install 'lmlink[proxy]'``).

lmlink's own transports speak to the server directly, which is what a local server wants.
Behind a corporate proxy, ``Client(proxy="http://proxy:3128")`` (or ``trust_env=True``,
which reads ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY``) uses these
instead: proxy handling is httpx's, a maintained library, not written here. httpx is
imported when such a client is made, never by ``import lmlink``.

They keep lmlink's promises: the response body is read raw and decoded by lmlink's own
bounded decoder (so ``max_response_bytes`` caps a gzip bomb from its first byte), every
failure is one of lmlink's errors (httpx's exceptions never escape), and the deadline
bounds every wait.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import suppress
from time import monotonic
from typing import TYPE_CHECKING, Any

from lmlink._errors import (
    APIConnectionError,
    ConfigurationError,
    LMLinkError,
    ResponseTooLargeError,
)

from .common import DEFAULT_LIMIT, Timeouts, forget_after_fork, make_ssl_context, timeout_error
from .response import _CODINGS, _Decoder

if TYPE_CHECKING:
    import ssl

    import httpx

__all__ = ["AsyncProxyTransport", "ProxyTransport"]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ConfigurationError(
            "proxy= and trust_env=True need httpx: pip install 'lmlink[proxy]'"
        ) from exc
    return httpx


def _timeout(httpx: Any, timeouts: Timeouts) -> Any:
    left = None if timeouts.deadline is None else max(timeouts.deadline - monotonic(), 1e-3)

    def bounded(value: float | None) -> float | None:
        if left is None:
            return value
        return left if value is None else min(value, left)

    return httpx.Timeout(
        connect=bounded(timeouts.connect),
        read=bounded(timeouts.idle),
        write=bounded(timeouts.idle),
        pool=left,
    )


_USERINFO = re.compile(r"//[^/@\s]*@")


def _error(
    httpx: Any,
    exc: Exception,
    where: str,
    timeouts: Timeouts,
    started: float,
    via: str | None = None,
) -> LMLinkError:
    """lmlink's error for an httpx failure (of a request sent at ``started``)."""
    if isinstance(exc, httpx.TimeoutException):
        deadline = timeouts.deadline
        if deadline is not None and monotonic() >= deadline - 0.005:
            # The deadline, not the idle timeout, bounded the wait that ran out.
            left = max(deadline - started, 0.0)
            writing = isinstance(exc, httpx.WriteTimeout)
            sent = not isinstance(exc, httpx.ConnectTimeout)
            return timeout_error("total", left, where, sent, writing=writing)
        if isinstance(exc, httpx.ConnectTimeout):
            return timeout_error("connect", timeouts.connect or 0.0, where, False)
        if isinstance(exc, httpx.PoolTimeout):
            return timeout_error("pool", 0.0, where, False)
        writing = isinstance(exc, httpx.WriteTimeout)
        return timeout_error("idle", timeouts.idle or 0.0, where, True, writing=writing)
    if isinstance(exc, httpx.ProxyError):
        return APIConnectionError(f"the proxy refused the request to {where}: {exc}", reason="")
    if isinstance(exc, httpx.ConnectError) and via is not None:
        proxy = _USERINFO.sub("//", via)
        refused = _refused(exc)
        return APIConnectionError(
            f"could not connect to the proxy {proxy} (for {where}): {exc}"
            + (" (is the proxy running?)" if refused else ""),
            reason="refused" if refused else "",
        )
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        refused = _refused(exc)
        reason = "refused" if refused else "tls" if "ssl" in text.lower() else ""
        hint = " (is the server running?)" if refused else ""
        return APIConnectionError(
            f"could not connect to {where} through the proxy: {text}{hint}", reason=reason
        )
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return APIConnectionError(
            f"the connection to {where} broke: {exc}", request_sent=True, reason="reset"
        )
    return APIConnectionError(f"the request to {where} failed: {exc}", reason="")


def _refused(exc: BaseException) -> bool:
    """Whether a connect failure was a refused connection: httpx's asyncio backend says
    only "All connection attempts failed", with the refusal as its cause."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; never a loop
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Body:
    """The decoding and the size cap of one response body, shared by both shells."""

    __slots__ = ("_decoder", "_limit", "_size", "started", "timeouts", "where")

    def __init__(
        self,
        headers: Mapping[str, str],
        limit: int | None,
        where: str,
        timeouts: Timeouts,
        started: float,
    ) -> None:
        self.timeouts = timeouts  # the request's, for the errors of reading its body
        self.started = started
        coding = headers.get("content-encoding", "").strip().lower()
        self._decoder = _Decoder(coding) if coding in _CODINGS else None
        self._limit = limit
        self._size = 0
        self.where = where

    def take(self, raw: bytes, limit: int | None = None) -> bytes:
        cap = self._limit if limit is None else limit
        data = raw if self._decoder is None else self._decoder.decode(raw, cap, self.where)
        self._size += len(data)
        if cap is not None and self._size > cap:
            raise ResponseTooLargeError(f"the response body from {self.where} is over {cap} bytes")
        return data

    def end(self) -> bytes:
        return b"" if self._decoder is None else self._decoder.flush(self.where)


class _Base:
    """What the two proxy transports share: settings, and the httpx client's arguments."""

    def __init__(
        self,
        *,
        proxy: str | None = None,
        trust_env: bool = False,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 256,
        max_body: int | None = None,
    ) -> None:
        self._httpx = _httpx()
        self._max_body = max_body
        self._kwargs: dict[str, Any] = {
            "proxy": proxy,
            "trust_env": trust_env,
            "verify": verify
            if isinstance(verify, bool) and not verify
            else make_ssl_context(verify),
            "limits": self._httpx.Limits(max_connections=max_connections),
            "follow_redirects": False,
        }
        # Only proxy= sends everything through the proxy: then a refused connection is the
        # proxy's (trust_env may go direct, by NO_PROXY).
        self._via = proxy if proxy is not None and not trust_env else None

    def _make(self, cls: Any) -> Any:
        """An httpx client of ``cls``; a proxy URL httpx cannot use is a ConfigurationError
        (its credentials left out of the message), not httpx's ValueError or ImportError."""
        try:
            return cls(**self._kwargs)
        except (ValueError, ImportError) as exc:
            text = _USERINFO.sub("//", str(exc))
            raise ConfigurationError(f"proxy cannot be used: {text}") from None

    def _headers(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        # Identity bodies, as lmlink's own transports ask (no Accept-Encoding).
        return [*headers, ("Accept-Encoding", "identity")]


class ProxyResponse:
    """A blocking response through the proxy (see :class:`lmlink._http.HTTPResponse`)."""

    def __init__(self, resp: httpx.Response, body: _Body, owner: ProxyTransport) -> None:
        self._resp = resp
        self._body = body
        self._owner = owner
        self._raw: Iterator[bytes] = resp.iter_raw()
        self.status = resp.status_code
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    def read(self, limit: int = DEFAULT_LIMIT) -> bytes:
        return b"".join(self._pieces(limit))

    def iter_bytes(self) -> Iterator[bytes]:
        for piece in self._pieces(None):
            if piece:
                yield piece

    def _pieces(self, limit: int | None) -> Iterator[bytes]:
        httpx = self._owner._httpx
        try:
            for raw in self._raw:
                yield self._body.take(raw, limit)
            yield self._body.end()
        except httpx.HTTPError as exc:
            self.close()
            body = self._body
            raise _error(httpx, exc, body.where, body.timeouts, body.started) from exc
        except BaseException:
            self.close()
            raise
        self.close()

    def discard_rest(self, grace: float) -> None:
        self.close()

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> ProxyResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProxyTransport(_Base):
    """The blocking transport through a proxy (see :class:`lmlink._http.Transport`)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._client = self._make(self._httpx.Client)
        # The parent's clients, kept (never closed, never used) in a forked child.
        self._parents: list[Any] = []
        forget_after_fork(self)

    def _after_fork(self) -> None:
        # The child must not share the parent's pooled proxy connections (both would read
        # each other's answers): it starts a pool of its own. Closing the parent's would
        # shut sockets the parent still uses, so they are only set aside.
        self._parents.append(self._client)
        self._client = self._make(self._httpx.Client)

    def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> ProxyResponse:
        httpx = self._httpx
        where = url.split("/")[2] if "//" in url else url
        started = monotonic()
        try:
            req = self._client.build_request(
                method,
                url,
                headers=self._headers(headers),
                content=body,
                timeout=_timeout(httpx, timeouts),
            )
            resp = self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise _error(httpx, exc, where, timeouts, started, self._via) from exc
        reader = _Body(resp.headers, self._max_body, where, timeouts, started)
        return ProxyResponse(resp, reader, self)

    def close(self) -> None:
        self._client.close()


class AsyncProxyResponse:
    """An asyncio response through the proxy (see :class:`lmlink._http.AsyncHTTPResponse`)."""

    def __init__(self, resp: httpx.Response, body: _Body, owner: AsyncProxyTransport) -> None:
        self._resp = resp
        self._body = body
        self._owner = owner
        self._raw: AsyncIterator[bytes] = resp.aiter_raw()
        self.status = resp.status_code
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self, limit: int = DEFAULT_LIMIT) -> bytes:
        return b"".join([piece async for piece in self._pieces(limit)])

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._nonempty()

    async def _nonempty(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces(None):
            if piece:
                yield piece

    async def _pieces(self, limit: int | None) -> AsyncIterator[bytes]:
        httpx = self._owner._httpx
        try:
            async for raw in self._raw:
                yield self._body.take(raw, limit)
            yield self._body.end()
        except httpx.HTTPError as exc:
            await self.aclose()
            body = self._body
            raise _error(httpx, exc, body.where, body.timeouts, body.started) from exc
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()

    async def discard_rest(self, grace: float) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> AsyncProxyResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncProxyTransport(_Base):
    """The asyncio transport through a proxy; an httpx client per event loop."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._make(self._httpx.Client).close()  # a proxy it cannot use: refused now
        self._lock = threading.Lock()
        # Each loop's httpx client, and the generator that closes it with the loop.
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        self._parents: list[Any] = []
        forget_after_fork(self)

    def _after_fork(self) -> None:
        # As for the blocking transport: a child starts with no connection of the parent's.
        self._lock = threading.Lock()
        self._parents.append(self._clients)
        self._clients = {}

    async def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
            fresh = entry is None
            if entry is None:
                for old in [old for old in self._clients if old.is_closed()]:
                    del self._clients[old]  # closed with its loop (see _closer)
                client = self._make(self._httpx.AsyncClient)
                entry = self._clients[loop] = (client, _closer(client))
        if fresh:
            await entry[1].__anext__()  # now the loop knows it (it never suspends)
        return entry[0]

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> AsyncProxyResponse:
        httpx = self._httpx
        where = url.split("/")[2] if "//" in url else url
        started = monotonic()
        client = await self._client()
        try:
            req = client.build_request(
                method,
                url,
                headers=self._headers(headers),
                content=body,
                timeout=_timeout(httpx, timeouts),
            )
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise _error(httpx, exc, where, timeouts, started, self._via) from exc
        reader = _Body(resp.headers, self._max_body, where, timeouts, started)
        return AsyncProxyResponse(resp, reader, self)

    async def aclose(self) -> None:
        here = asyncio.get_running_loop()
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop, (_, closer) in clients.items():
            if loop is here:
                await closer.aclose()
            elif not loop.is_closed():
                with suppress(RuntimeError):  # closed in the meantime: closed with it
                    asyncio.run_coroutine_threadsafe(_close(closer), loop)


async def _closer(client: Any) -> AsyncGenerator[None, None]:
    """Closes ``client`` when closed: on ``aclose()``, or when its event loop shuts down its
    async generators, as ``asyncio.run()`` does before closing the loop. An httpx client's
    connections can only be closed on their own loop, so a client used once per
    ``asyncio.run()`` would otherwise leave its sockets to the garbage collector."""
    try:
        yield
    finally:
        await client.aclose()


async def _close(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()

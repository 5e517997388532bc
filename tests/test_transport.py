"""Tests for the sync and async transports against real servers on 127.0.0.1.

The server is a raw-socket HTTP/1.1 server in threads whose behaviour is chosen by the
request path (canned bodies, chunked streams, stalls, early closes, ...); it records every
connection it accepted and every EOF it saw, so tests can check connection reuse and that an
abandoned response really closed its socket. Most tests run on both shells through the
``shell`` fixture, which gives the sync and async transports one blocking face.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from lmlink._errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    ResponseTooLargeError,
)
from lmlink._http.aio import AsyncResponse, AsyncTransport
from lmlink._http.common import Timeouts
from lmlink._http.sync import Response, SyncTransport

JSON = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"content":"hi"}}]}'
T = Timeouts(connect=5.0, idle=5.0, deadline=None)
WAIT = 10.0  # bound on waiting for the server to notice something (never asserted on)


# -- the server ---------------------------------------------------------------------------


class Peer:
    """One accepted connection, with a read buffer for request parsing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.requests = 0

    def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        body, self.buf = self.buf[:size], self.buf[size:]
        self.requests += 1
        return method, target, headers, body

    def wait_eof(self) -> bool:
        """Block until the client closes; True if it did (EOF or reset)."""
        self.sock.settimeout(WAIT)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def response(body: bytes = JSON, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(pieces: list[bytes], extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Server:
    """A threaded raw-socket HTTP/1.1 server whose behaviour is picked by the request path."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        scheme = "https" if context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.context = context
        self.accepted = 0
        self.open = 0
        self.eofs: list[str] = []  # paths whose client closed the connection mid-response
        self.paths: list[str] = []
        self.release = threading.Event()  # lets /hold requests answer
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closing:
                    sock.close()
                    return
                self.accepted += 1
                self.open += 1
                self.socks.append(sock)
                self.changed.notify_all()
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        sock = raw
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(raw, server_side=True)
                with self.lock:
                    self.socks.append(sock)  # the raw socket gave its fd to this one
            peer = Peer(sock)
            while True:
                request = peer.read_request()
                if request is None:
                    break
                method, target, _, body = request
                with self.lock:
                    self.paths.append(target)
                    self.changed.notify_all()
                if not self.handle(peer, method, target, body):
                    break
        except OSError:
            pass
        finally:
            sock.close()
            with self.lock:
                self.open -= 1
                self.changed.notify_all()

    def handle(self, peer: Peer, method: str, target: str, body: bytes) -> bool:
        """Answer one request; return False to close the connection."""
        url = urlsplit(target)
        path = url.path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path == "/json" and method == "HEAD":
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n")
        elif path == "/json":
            peer.send(response())
        elif path == "/echo":
            peer.send(response(body))
        elif path == "/chunked":
            peer.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'5;ext=1;q="a b"\r\nhello\r\n2\r\n, \r\n5\r\nworld\r\n'
                b"0\r\nX-Trailer: 1\r\n\r\n"
            )
        elif path == "/stream":
            events = [b'data: {"i": %d}\n\n' % i for i in range(int(query.get("n", "10")))]
            peer.send(chunked([*events, b"data: [DONE]\n\n"]))
        elif path == "/interim":
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"after 100"))
        elif path == "/no-content":
            peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/gzip":
            packed = gzip.compress(JSON * 20)
            peer.send(response(packed, extra="Content-Encoding: gzip\r\n"))
        elif path == "/big":
            peer.send(response(b"x" * int(query["n"])))
        elif path == "/big-chunked":
            peer.send(chunked([b"y" * 1000] * int(query["n"])))
        elif path == "/http10":
            peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
            return False
        elif path == "/conn-close":
            peer.send(response(extra="Connection: close\r\n"))
            return False
        elif path == "/die-on-reuse":
            if peer.requests > 1:
                return False  # the request arrived, but the connection dies unanswered
            peer.send(response())
        elif path == "/no-answer":
            return False
        elif path == "/malformed":
            peer.send(b"HTTP/1.1 OK\r\n\r\n")
        elif path == "/stall-head":
            self._stall(peer, path)
            return False
        elif path == "/stall-body":
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self._stall(peer, path)
            return False
        elif path == "/stall-stream":
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            self._stall(peer, path)
            return False
        elif path == "/hold":
            self.release.wait(WAIT)
            peer.send(response(target.encode()))
        else:
            peer.send(response(b"not found", "404 Not Found"))
        return True

    def _stall(self, peer: Peer, path: str) -> None:
        if peer.wait_eof():
            with self.lock:
                self.eofs.append(path)
                self.changed.notify_all()

    def wait_for(self, test: Callable[[], bool]) -> bool:
        """Wait (bounded) until ``test()`` holds under the server lock."""
        with self.lock:
            return self.changed.wait_for(test, WAIT)

    def close(self) -> None:
        with self.lock:
            self.closing = True
            socks = list(self.socks)
        self.release.set()
        self.listener.close()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.acceptor.join(WAIT)
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def server() -> Iterator[Server]:
    """A fresh scripted server on a free loopback port."""
    srv = Server()
    yield srv
    srv.close()


# -- one blocking face for both transports --------------------------------------------------


class SyncShell:
    """The sync transport, driven directly."""

    kind = "sync"

    def __init__(self, **kwargs: Any) -> None:
        self.transport = SyncTransport(**kwargs)

    def request(
        self, url: str, method: str = "GET", body: bytes | None = None, timeouts: Timeouts = T
    ) -> Response:
        return self.transport.request(method, url, [("Accept", "*/*")], body, timeouts)

    def read(self, resp: Any, limit: int = 64 << 20) -> bytes:
        return resp.read(limit)  # type: ignore[no-any-return]

    def iterate(self, resp: Any) -> Callable[[], bytes | None]:
        it = resp.iter_bytes()
        return lambda: next(it, None)

    def close_response(self, resp: Any) -> None:
        resp.close()

    def get(self, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        with self.request(url, **kwargs) as resp:
            return resp.status, resp.headers, resp.read()

    def close(self) -> None:
        self.transport.close()


class AsyncShell:
    """The async transport, driven on a private event loop."""

    kind = "async"

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.transport = AsyncTransport(**kwargs)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def request(
        self, url: str, method: str = "GET", body: bytes | None = None, timeouts: Timeouts = T
    ) -> AsyncResponse:
        coro = self.transport.request(method, url, [("Accept", "*/*")], body, timeouts)
        return self.run(coro)  # type: ignore[no-any-return]

    def read(self, resp: Any, limit: int = 64 << 20) -> bytes:
        return self.run(resp.read(limit))  # type: ignore[no-any-return]

    def iterate(self, resp: Any) -> Callable[[], bytes | None]:
        it = resp.aiter_bytes()

        async def step() -> bytes | None:
            try:
                return await it.__anext__()  # type: ignore[no-any-return]
            except StopAsyncIteration:
                return None

        return lambda: self.run(step())

    def close_response(self, resp: Any) -> None:
        self.run(resp.aclose())

    def get(self, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        resp = self.request(url, **kwargs)
        try:
            return resp.status, resp.headers, self.read(resp)
        finally:
            self.close_response(resp)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.run(self.transport.aclose())
            self.loop.close()


Shell = SyncShell | AsyncShell


@pytest.fixture(params=["sync", "async"])
def make_shell(request: pytest.FixtureRequest) -> Iterator[Callable[..., Shell]]:
    """Build a transport of the parametrised kind (closed after the test)."""
    made: list[Shell] = []

    def make(**kwargs: Any) -> Shell:
        shell: Shell = SyncShell(**kwargs) if request.param == "sync" else AsyncShell(**kwargs)
        made.append(shell)
        return shell

    yield make
    for shell in made:
        shell.close()


@pytest.fixture
def shell(make_shell: Callable[..., Shell]) -> Shell:
    """A transport with default settings, sync or async."""
    return make_shell()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# -- basics and keep-alive --------------------------------------------------------------------


def test_get_json(shell: Shell, server: Server) -> None:
    """A Content-Length response comes back with status, lower-cased headers and body."""
    status, headers, body = shell.get(server.url + "/json")
    assert (status, body) == (200, JSON)
    assert headers["content-type"] == "application/json"


def test_post_body_sent(shell: Shell, server: Server) -> None:
    """The request body reaches the server intact (Content-Length framing)."""
    payload = b'{"messages": [' + b"1," * 50_000 + b"2]}"
    assert shell.get(server.url + "/echo", method="POST", body=payload)[2] == payload


def test_keep_alive_reuses_one_connection(shell: Shell, server: Server) -> None:
    """N sequential requests to one origin use a single TCP connection."""
    for path in ["/json", "/chunked", "/gzip", "/no-content", "/interim"] * 4:
        shell.get(server.url + path)
    assert server.accepted == 1


def test_chunked_with_extensions_and_trailers(shell: Shell, server: Server) -> None:
    """A chunked body with extensions and trailers is de-chunked."""
    assert shell.get(server.url + "/chunked")[2] == b"hello, world"


def test_interim_and_no_content(shell: Shell, server: Server) -> None:
    """A 100 Continue is skipped; a 204 has an empty body and keeps the connection."""
    assert shell.get(server.url + "/interim")[:3:2] == (200, b"after 100")
    assert shell.get(server.url + "/no-content")[:3:2] == (204, b"")
    assert server.accepted == 1


def test_head_request_has_no_body(shell: Shell, server: Server) -> None:
    """A HEAD response ends after its head even with a Content-Length; the connection stays."""
    assert shell.get(server.url + "/json", method="HEAD")[2] == b""
    assert shell.get(server.url + "/json")[2] == JSON
    assert server.accepted == 1


def test_gzip_body_decoded(shell: Shell, server: Server) -> None:
    """A gzip Content-Encoding the server sent anyway is decoded."""
    assert shell.get(server.url + "/gzip")[2] == JSON * 20


def test_close_delimited_body(shell: Shell, server: Server) -> None:
    """An HTTP/1.0 body without length is read to EOF and that connection is not reused."""
    assert shell.get(server.url + "/http10")[2] == b"until close"
    assert shell.get(server.url + "/json")[2] == JSON
    assert server.accepted == 2


def test_connection_close_not_pooled(shell: Shell, server: Server) -> None:
    """A "Connection: close" response is not pooled; the next request connects again."""
    shell.get(server.url + "/conn-close")
    shell.get(server.url + "/json")
    assert server.accepted == 2


def test_stream_chunks_arrive(shell: Shell, server: Server) -> None:
    """iter_bytes/aiter_bytes yield the whole de-chunked stream, never an empty piece."""
    resp = shell.request(server.url + "/stream?n=500")
    next_piece = shell.iterate(resp)
    pieces = []
    while (piece := next_piece()) is not None:
        pieces.append(piece)
    assert all(pieces)
    data = b"".join(pieces)
    assert data.count(b"data: ") == 501
    assert data.endswith(b"data: [DONE]\n\n")
    assert next_piece() is None  # reading past the end returns at once
    shell.close_response(resp)
    shell.get(server.url + "/json")
    assert server.accepted == 1


def test_stale_pooled_connection_retried(shell: Shell, server: Server) -> None:
    """A pooled connection that dies before answering is replaced and the request resent."""
    assert shell.get(server.url + "/die-on-reuse")[2] == JSON
    assert shell.get(server.url + "/die-on-reuse")[2] == JSON
    assert server.accepted == 2
    assert server.paths == ["/die-on-reuse"] * 3


def test_fresh_connection_closed_is_not_retried(shell: Shell, server: Server) -> None:
    """A new connection closed without an answer raises APIConnectionError("closed")."""
    with pytest.raises(APIConnectionError, match="closed the connection") as info:
        shell.get(server.url + "/no-answer")
    assert (info.value.reason, info.value.request_sent) == ("closed", True)
    assert server.paths == ["/no-answer"]


def test_read_past_end_returns_at_once(shell: Shell, server: Server) -> None:
    """Reading a finished body again returns b"" without waiting."""
    resp = shell.request(server.url + "/chunked")
    assert shell.read(resp) == b"hello, world"
    assert shell.read(resp) == b""
    assert shell.iterate(resp)() is None
    shell.close_response(resp)


def test_bad_request_arguments(shell: Shell, server: Server) -> None:
    """A header with CR/LF or a non-http URL raises ConfigurationError before connecting."""
    with pytest.raises(ConfigurationError):
        shell.get(server.url + "/json", method="GET\r\nX-Evil: 1\r\nY:")
    with pytest.raises(ConfigurationError):
        shell.get("ftp://127.0.0.1/")
    assert server.accepted == 0


def test_malformed_response(shell: Shell, server: Server) -> None:
    """A broken status line raises APIConnectionError saying what was wrong."""
    with pytest.raises(APIConnectionError, match=r"malformed HTTP response.*bad status line"):
        shell.get(server.url + "/malformed")


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big?n=1000000", "/big-chunked?n=1000"])
def test_body_over_limit(shell: Shell, server: Server, path: str) -> None:
    """A body over read()'s limit raises ResponseTooLargeError and the socket is closed."""
    resp = shell.request(server.url + path)
    with pytest.raises(ResponseTooLargeError, match="over 1000 bytes"):
        shell.read(resp, limit=1000)
    shell.close_response(resp)
    shell.get(server.url + "/json")
    assert server.accepted == 2


# -- timeouts -------------------------------------------------------------------------------


def test_idle_timeout_on_stalled_head(shell: Shell, server: Server) -> None:
    """No response head within idle raises APITimeoutError(phase="idle") and closes."""
    timeouts = Timeouts(connect=5.0, idle=0.2, deadline=None)
    with pytest.raises(APITimeoutError) as info:
        shell.request(server.url + "/stall-head", timeouts=timeouts)
    exc = info.value
    assert (exc.phase, exc.timeout, exc.request_sent, exc.reason) == ("idle", 0.2, True, "timeout")
    assert f"no data from 127.0.0.1:{server.port} for 0.2 s (idle timeout)" == exc.message
    assert server.wait_for(lambda: "/stall-head" in server.eofs)


def test_idle_timeout_on_stalled_body(shell: Shell, server: Server) -> None:
    """A body that stops arriving raises APITimeoutError(phase="idle") from read()."""
    timeouts = Timeouts(connect=5.0, idle=0.2, deadline=None)
    resp = shell.request(server.url + "/stall-body", timeouts=timeouts)
    assert resp.status == 200
    with pytest.raises(APITimeoutError) as info:
        shell.read(resp)
    assert info.value.phase == "idle"
    assert server.wait_for(lambda: "/stall-body" in server.eofs)


def test_deadline_caps_the_wait(shell: Shell, server: Server) -> None:
    """A deadline sooner than idle ends the wait with phase "total"."""
    timeouts = Timeouts(connect=5.0, idle=30.0, deadline=time.monotonic() + 0.2)
    with pytest.raises(APITimeoutError) as info:
        shell.request(server.url + "/stall-head", timeouts=timeouts)
    assert info.value.phase == "total"
    assert "deadline" in info.value.message


def test_deadline_already_passed(shell: Shell, server: Server) -> None:
    """A deadline in the past fails at once with phase "total" (or "connect")."""
    timeouts = Timeouts(connect=5.0, idle=5.0, deadline=time.monotonic() - 1)
    with pytest.raises(APITimeoutError) as info:
        shell.get(server.url + "/json", timeouts=timeouts)
    assert info.value.phase == "total"


def test_connect_refused(shell: Shell) -> None:
    """Nothing listening gives APIConnectionError(reason="refused", request_sent=False)."""
    port = free_port()
    with pytest.raises(APIConnectionError) as info:
        shell.get(f"http://127.0.0.1:{port}/json")
    exc = info.value
    assert (exc.reason, exc.request_sent) == ("refused", False)
    assert exc.message == (
        f"could not connect to 127.0.0.1:{port}: connection refused (is the server running?)"
    )
    assert isinstance(exc.__cause__, OSError)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose full accept queue makes the kernel drop new SYNs (connects hang)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue; nothing is ever accepted
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


def test_invalid_host_name(shell: Shell) -> None:
    """A host name IDNA cannot encode fails as reason "dns" without any lookup."""
    with pytest.raises(APIConnectionError, match="invalid host name") as info:
        shell.get("http://a..b/json")
    assert (info.value.reason, info.value.request_sent) == ("dns", False)


def test_connect_timeout(shell: Shell, blackhole: int) -> None:
    """A connect that gets no answer ends with APITimeoutError(phase="connect")."""
    timeouts = Timeouts(connect=0.3, idle=5, deadline=None)
    with pytest.raises(APIConnectionError) as info:
        shell.get(f"http://127.0.0.1:{blackhole}/", timeouts=timeouts)
    if info.value.reason == "refused":
        pytest.skip("this kernel refuses, rather than drops, connects to a full backlog")
    assert isinstance(info.value, APITimeoutError)
    assert (info.value.phase, info.value.timeout, info.value.request_sent) == (
        "connect",
        0.3,
        False,
    )
    assert (
        info.value.message
        == f"could not connect to 127.0.0.1:{blackhole} within 0.3 s (connect timeout)"
    )


def test_async_cancel_during_connect(server: Server, blackhole: int) -> None:
    """Cancelling a request while it connects re-raises the cancellation and frees the slot."""

    async def main() -> bytes:
        async with AsyncTransport(max_connections=1) as transport:
            url = f"http://127.0.0.1:{blackhole}/"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(transport.request("GET", url, [], None, T), 0.2)
            resp = await transport.request("GET", server.url + "/json", [], None, T)
            return await resp.read()

    assert asyncio.run(main()) == JSON


# -- closing --------------------------------------------------------------------------------


def test_early_close_of_stream_closes_socket(shell: Shell, server: Server) -> None:
    """Closing a response mid-stream closes its socket: the server sees EOF."""
    resp = shell.request(server.url + "/stall-stream")
    assert shell.iterate(resp)() == b"first"
    shell.close_response(resp)
    shell.close_response(resp)  # idempotent
    assert server.wait_for(lambda: "/stall-stream" in server.eofs)
    assert shell.get(server.url + "/json")[2] == JSON
    assert server.accepted == 2


def test_unread_response_close_closes_socket(shell: Shell, server: Server) -> None:
    """Closing a response whose body was not read does not pool its connection."""
    resp = shell.request(server.url + "/stall-body")
    shell.close_response(resp)
    assert server.wait_for(lambda: "/stall-body" in server.eofs)


def test_no_fd_leak(make_shell: Callable[..., Shell], server: Server) -> None:
    """Many requests, including failures, leave no file descriptor open once closed."""
    shell = make_shell(max_connections=4)
    shell.get(server.url + "/json")
    shell.close()
    assert server.wait_for(lambda: server.open == 0)
    before = fd_count()
    shell = make_shell(max_connections=4)
    dead = f"http://127.0.0.1:{free_port()}/"
    for i in range(200):
        path = ["/json", "/chunked", "/http10", "/conn-close", "/gzip", "/die-on-reuse"][i % 6]
        shell.get(server.url + path)
        if i % 50 == 0:
            with pytest.raises(APIConnectionError):
                shell.get(dead)
            with pytest.raises(APIConnectionError):
                shell.get(server.url + "/malformed")
            resp = shell.request(server.url + "/stream?n=50")
            shell.iterate(resp)()
            shell.close_response(resp)
    shell.close()
    assert server.wait_for(lambda: server.open == 0)
    assert fd_count() == before


def test_closed_transport_refuses(shell: Shell, server: Server) -> None:
    """A request on a closed transport raises ConfigurationError."""
    shell.get(server.url + "/json")
    if isinstance(shell, SyncShell):
        shell.transport.close()
    else:
        shell.run(shell.transport.aclose())
    with pytest.raises(ConfigurationError):
        shell.get(server.url + "/json")


# -- the pool -------------------------------------------------------------------------------


def test_sync_pool_limit_waits(server: Server) -> None:
    """With max_connections=2, a third concurrent request waits and reuses a connection."""
    transport = SyncTransport(max_connections=2)
    results: list[bytes] = []

    def call(i: int) -> None:
        with transport.request("GET", f"{server.url}/hold?i={i}", [], None, T) as resp:
            results.append(resp.read())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    assert server.wait_for(lambda: len(server.paths) >= 2)
    server.release.set()
    for thread in threads:
        thread.join(WAIT)
    transport.close()
    assert sorted(results) == [b"/hold?i=0", b"/hold?i=1", b"/hold?i=2"]
    assert server.accepted == 2


def test_pool_wait_bounded_by_deadline(shell: Shell, server: Server) -> None:
    """When every connection is busy, the wait for one ends at the deadline (phase "pool")."""
    shell = type(shell)(max_connections=1)
    try:
        held = shell.request(server.url + "/stall-body")
        timeouts = Timeouts(connect=5.0, idle=5.0, deadline=time.monotonic() + 0.2)
        with pytest.raises(APITimeoutError) as info:
            shell.get(server.url + "/json", timeouts=timeouts)
        assert (info.value.phase, info.value.request_sent) == ("pool", False)
        shell.close_response(held)
        assert shell.get(server.url + "/json")[2] == JSON
    finally:
        shell.close()


def test_pool_evicts_idle_connection_of_other_origin(shell: Shell, server: Server) -> None:
    """At the limit, an idle connection to another origin is closed to make room."""
    other = Server()
    try:
        shell = type(shell)(max_connections=1)
        assert shell.get(server.url + "/json")[2] == JSON
        assert shell.get(other.url + "/json")[2] == JSON
        assert shell.get(server.url + "/json")[2] == JSON
        shell.close()
        assert (server.accepted, other.accepted) == (2, 1)
    finally:
        other.close()


def test_async_pool_fifo(server: Server) -> None:
    """Async callers waiting for a connection are served in arrival order."""

    async def main() -> list[bytes]:
        transport = AsyncTransport(max_connections=1)
        done: list[bytes] = []

        async def call(i: int) -> None:
            resp = await transport.request("GET", f"{server.url}/hold?i={i}", [], None, T)
            done.append(await resp.read())

        tasks = [asyncio.create_task(call(i)) for i in range(5)]
        await asyncio.sleep(0)
        while not server.paths:
            await asyncio.sleep(0.01)
        server.release.set()
        await asyncio.gather(*tasks)
        await transport.aclose()
        return done

    done = asyncio.run(main())
    assert done == [b"/hold?i=%d" % i for i in range(5)]
    assert server.accepted == 1


def test_async_concurrent_requests(server: Server) -> None:
    """64 requests in flight on one transport all succeed within max_connections sockets."""

    async def main() -> list[bytes]:
        async with AsyncTransport(max_connections=16) as transport:

            async def call() -> bytes:
                resp = await transport.request("GET", server.url + "/json", [], None, T)
                return await resp.read()

            return await asyncio.gather(*(call() for _ in range(64)))

    assert asyncio.run(main()) == [JSON] * 64
    assert server.accepted <= 16


# -- async cancellation ------------------------------------------------------------------------


def test_async_cancel_waiting_for_head_closes(server: Server) -> None:
    """Cancelling a request waiting for its head closes the connection and re-raises."""

    async def main() -> None:
        async with AsyncTransport() as transport:
            task = asyncio.create_task(
                transport.request("GET", server.url + "/stall-head", [], None, T)
            )
            while not server.paths:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert server.wait_for(lambda: "/stall-head" in server.eofs)


def test_async_timeout_mid_stream_closes(server: Server) -> None:
    """A timeout (cancellation) around a stream read closes the connection and surfaces."""

    async def main() -> None:
        async with AsyncTransport() as transport:
            resp = await transport.request("GET", server.url + "/stall-stream", [], None, T)
            it = resp.aiter_bytes()
            assert await it.__anext__() == b"first"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(it.__anext__(), 0.2)
            with pytest.raises(APIConnectionError):
                await resp.read()

    asyncio.run(main())
    assert server.wait_for(lambda: "/stall-stream" in server.eofs)


def test_async_cancelled_pool_waiter_gives_slot_back(server: Server) -> None:
    """A caller cancelled while waiting for a pool slot does not lose the slot."""

    async def main() -> bytes:
        async with AsyncTransport(max_connections=1) as transport:
            held = await transport.request("GET", server.url + "/stall-body", [], None, T)
            waiter = asyncio.create_task(
                transport.request("GET", server.url + "/json", [], None, T)
            )
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await held.aclose()
            resp = await transport.request("GET", server.url + "/json", [], None, T)
            return await resp.read()

    assert asyncio.run(main()) == JSON


async def _collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in it])


def test_async_stream_backpressure(server: Server) -> None:
    """A large stream read slowly still arrives whole (reading pauses and resumes)."""

    async def main() -> bytes:
        async with AsyncTransport() as transport:
            resp = await transport.request("GET", server.url + "/big-chunked?n=4000", [], None, T)
            await asyncio.sleep(0.2)  # let the socket fill the parser past the high-water mark
            return await _collect(resp.aiter_bytes())

    assert asyncio.run(main()) == b"y" * 4_000_000


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[Server]:
    """The scripted server behind TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    srv = Server(context)
    yield srv
    srv.close()


def test_tls_unverified(make_shell: Callable[..., Shell], tls_server: Server) -> None:
    """verify=False talks to a self-signed server, reusing the TLS connection."""
    shell = make_shell(verify=False)
    for _ in range(3):
        assert shell.get(tls_server.url + "/json")[2] == JSON
    assert tls_server.accepted == 1


def test_tls_verification_fails(make_shell: Callable[..., Shell], tls_server: Server) -> None:
    """verify=True rejects a self-signed certificate with reason "tls"."""
    shell = make_shell(verify=True)
    with pytest.raises(APIConnectionError) as info:
        shell.get(tls_server.url + "/json")
    assert (info.value.reason, info.value.request_sent) == ("tls", False)
    assert "verify" in info.value.message


def test_tls_custom_context(
    make_shell: Callable[..., Shell], tls_server: Server, cert: tuple[Path, Path]
) -> None:
    """An SSLContext that trusts the certificate verifies it (SNI/hostname = 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(cert[0]))
    shell = make_shell(verify=context)
    assert shell.get(tls_server.url + "/stream?n=20")[2].count(b"data:") == 21

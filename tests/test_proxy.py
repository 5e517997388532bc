"""Proxies are opt-in: ``proxy=`` or ``trust_env=True`` send requests through an HTTP proxy
(the httpx-based transport); by default ``HTTP_PROXY`` is ignored and the server is reached
directly. The proxy is a small forwarding proxy on 127.0.0.1, run by the test."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import lmlink
from apis import API
from lmlink.testing import FakeServer, Reply

pytest.importorskip("httpx")


class ForwardProxy:
    """An HTTP forward proxy: reads an absolute-form request, sends it to its origin with
    ``Connection: close`` and relays the answer until the origin closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, body = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            size = 0
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    size = int(value)
                if name.lower() not in ("connection", "proxy-connection", "keep-alive"):
                    headers.append(line)
            while len(body) < size:
                body += conn.recv(65536)
            self.seen.append(f"{method} {target}")
            hostport, _, path = target.removeprefix("http://").partition("/")
            host, _, port = hostport.partition(":")
            with socket.create_connection((host, int(port or 80))) as up:
                request = f"{method} /{path} {version}\r\n" + "\r\n".join(headers)
                up.sendall(request.encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body)
                while data := up.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    p = ForwardProxy()
    yield p
    p.close()


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_proxy_carries_plain_and_streamed_calls(
    make_api: Callable[..., API], server: FakeServer, proxy: ForwardProxy, mode: str
) -> None:
    """proxy= sends every request through the proxy; answers arrive whole."""
    api = make_api(proxy=proxy.url)
    server.enqueue(Reply(content="through the proxy", reasoning="hmm"))
    resp = api.chat("q") if mode == "plain" else api.chat_stream("q")
    assert (resp.content, resp.reasoning) == ("through the proxy", "hmm")
    assert proxy.seen == [f"POST {server.url}/chat/completions"]
    assert [m.id for m in api.models()] == ["fake-model"]


def test_trust_env_reads_http_proxy_and_the_default_ignores_it(
    make_api: Callable[..., API],
    server: FakeServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY is used with trust_env=True only."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert make_api().chat("direct").content
    assert proxy.seen == []
    assert make_api(trust_env=True).chat("proxied").content
    assert proxy.seen == [f"POST {server.url}/chat/completions"]


def test_proxy_errors_are_lmlink_errors(make_api: Callable[..., API], server: FakeServer) -> None:
    """A proxy that is not there is an APIConnectionError, not an httpx exception."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    api = make_api(proxy=dead, max_retries=0)
    with pytest.raises(lmlink.APIConnectionError):
        api.chat("q")


def test_proxy_keeps_the_size_cap(
    make_api: Callable[..., API], server: FakeServer, proxy: ForwardProxy
) -> None:
    """max_response_bytes holds through the proxy transport too."""
    api = make_api(proxy=proxy.url, max_response_bytes=1000)
    server.enqueue(Reply(content="x" * 5000))
    with pytest.raises(lmlink.ResponseTooLargeError):
        api.chat("q")


def test_proxy_keeps_the_gzip_bound(
    make_api: Callable[..., API], server: FakeServer, proxy: ForwardProxy
) -> None:
    """A gzip body is decoded by lmlink's bounded decoder: a bomb stops at the cap."""
    import gzip

    bomb = gzip.compress(b" " * (10 << 20))
    server.enqueue(
        Reply(body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    )
    api = make_api(proxy=proxy.url, max_response_bytes=1 << 16)
    with pytest.raises(lmlink.ResponseTooLargeError):
        api.chat("q")

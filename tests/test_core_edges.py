"""Edges of the core found by a hostile review: event loops that close under a client, call
options on every path, and the agreement of plain and streamed answers on odd bodies. All
through real HTTP (the fake server on port 0)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable

import pytest

import lmlink
from apis import API
from lmlink.testing import FakeServer, Reply

MODES = ["plain", "stream"]


def _ask(api: API, mode: str, *args: object, **kwargs: object) -> lmlink.ChatResponse:
    if mode == "plain":
        return api.chat(*args, **kwargs)
    return api.chat_stream(*args, **kwargs)


# -- event loops -------------------------------------------------------------------------------


def test_asyncio_run_per_call_leaves_no_socket_unclosed(server: FakeServer) -> None:
    """``asyncio.run(client.chat(...))`` once per call, the usual script pattern: the pool of
    each finished loop is closed for real (no ResourceWarning, which pytest makes an error),
    and the server sees every connection hung up."""
    client = lmlink.AsyncClient(endpoint=server.url, model="fake-model", timeout=5.0)
    for text in ("one", "two", "three"):
        assert asyncio.run(client.chat(text)).content

    async def leave_early() -> None:
        async with client.stream("four") as s:
            async for _ in s:
                break

    asyncio.run(leave_early())
    asyncio.run(client.aclose())
    gc.collect()


# -- call options ------------------------------------------------------------------------------

KEY = "sk-per-call-0123456789"


@pytest.mark.parametrize(
    ("mode", "reply"),
    [
        ("plain", Reply.error(401, f"invalid api key {KEY}")),
        ("stream", Reply.error(401, f"invalid api key {KEY}")),
        ("stream", Reply(deltas=[f"echo {KEY} ", "and ", "more"], cut_after=2)),
    ],
    ids=["401-plain", "401-stream", "cut-after-echo-stream"],
)
def test_a_key_given_in_a_calls_headers_is_redacted(
    api: API, server: FakeServer, mode: str, reply: Reply
) -> None:
    """``headers={"Authorization": "Bearer KEY"}`` on one call: a server that echoes the key
    does not get it into the error (message, body, .partial), as with the client's api_key."""
    server.enqueue(reply)
    with pytest.raises(lmlink.LMLinkError) as info:
        _ask(api, mode, "q", headers={"Authorization": f"Bearer {KEY}"})
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    exc = info.value
    seen = [str(exc), repr(exc.__dict__), json.dumps(getattr(exc, "body", None))]
    partial = getattr(exc, "partial", None)
    if partial is not None:
        seen.append(partial.content)
    assert not [text for text in seen if KEY in text]
    assert KEY.encode() not in pickle.dumps(exc)


# -- fork, through a proxy ---------------------------------------------------------------------


class KeepAliveProxy:
    """A proxy that keeps its client connections open and answers every absolute-form
    chat request itself, echoing the last message (so answers show whose request they were)."""

    def __init__(self, stall: float = 0.0) -> None:
        self.stall = stall  # > 0: stream one delta, then stay silent this long
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                size = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        size = int(value)
                while len(buf) < size:
                    buf += conn.recv(65536)
                body, buf = buf[:size], buf[size:]
                text = json.loads(body)["messages"][-1]["content"]
                if self.stall:
                    delta = {"choices": [{"delta": {"content": text}}]}
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Connection: close\r\n\r\ndata: " + json.dumps(delta).encode() + b"\n\n"
                    )
                    time.sleep(self.stall)
                    return
                answer = json.dumps(
                    {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )

    def close(self) -> None:
        self.listener.close()


def test_a_forked_child_never_uses_the_parents_proxy_connections() -> None:
    """``Client(proxy=...)`` used before fork: parent and child each read their own answers
    (the child opens connections of its own, as without a proxy)."""
    pytest.importorskip("httpx")
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    proxy = KeepAliveProxy()
    client = lmlink.Client(endpoint="http://llm.test/v1", model="m", proxy=proxy.url, timeout=10)
    assert client.chat("before").content == "before"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never through pytest
        ok = True
        try:
            for i in range(30):
                ok = ok and client.chat(f"child-{i}").content == f"child-{i}"
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    wrong = []
    for i in range(30):
        try:
            got = client.chat(f"parent-{i}").content
        except lmlink.LMLinkError as exc:
            got = repr(exc)
        if got != f"parent-{i}":
            wrong.append(got)
    child_ok = os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    client.close()
    proxy.close()
    assert (wrong, child_ok) == ([], True)
    assert proxy.connections >= 2


# -- a plain call answered with a stream ------------------------------------------------------


def _events(
    *chunks: dict[str, object], done: bool = True, kind: str = "text/event-stream"
) -> Reply:
    raw = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    if done:
        raw.append(b"data: [DONE]\n\n")
    return Reply(raw_body_chunks=raw, headers={"Content-Type": kind})


@pytest.mark.parametrize("mode", MODES)
def test_an_event_stream_answer_to_a_plain_call_is_folded_like_a_stream(
    api: API, server: FakeServer, mode: str
) -> None:
    """A server that streams although the request said ``"stream": false`` (the mirror of one
    that ignores ``"stream": true``): the plain call folds the events with the same rules as
    a stream, so both calls give the same answer."""
    server.enqueue(
        _events(
            {"model": "real", "choices": [{"delta": {"reasoning_content": "hm"}}]},
            {"choices": [{"delta": {"content": "hel"}}]},
            {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
        )
    )
    resp = _ask(api, mode, "q")
    got = (resp.content, resp.reasoning, resp.model, resp.finish_reason, resp.output_tokens)
    assert got == ("hello", "hm", "real", "stop", 3)


@pytest.mark.parametrize("mode", MODES)
def test_an_event_stream_answer_to_a_plain_call_keeps_the_stream_errors(
    api: API, server: FakeServer, mode: str
) -> None:
    """The same events give the same typed errors: an in-band error, and a stream that
    ends without finishing."""
    server.enqueue(_events({"object": "error", "message": "maximum context length", "code": 400}))
    with pytest.raises(lmlink.ContextLengthError):
        _ask(api, mode, "q")
    server.enqueue(_events({"choices": [{"delta": {"content": "cut"}}]}, done=False))
    with pytest.raises(lmlink.StreamError, match="ended before it finished") as info:
        _ask(api, mode, "q")
    assert info.value.partial is not None
    assert info.value.partial.content == "cut"


@pytest.mark.parametrize("mode", MODES)
def test_a_header_given_as_none_is_left_out_not_sent_as_text(
    make_api: Callable[..., API], server: FakeServer, mode: str
) -> None:
    """``headers={"Authorization": None}`` on one call leaves the client's key out of that
    call (it was sent as the text "None"); ``Client(headers={"User-Agent": None})`` leaves
    that header out of every call."""
    api = make_api(api_key="sk-client-0123456789", headers={"User-Agent": None, "X-App": "a"})
    _ask(api, mode, "q", headers={"Authorization": None, "x-app": "b"})
    sent = server.requests[-1].headers
    assert ("authorization" in sent, "user-agent" in sent, sent.get("x-app")) == (
        False,
        False,
        "b",
    )
    _ask(api, mode, "q")
    assert server.requests[-1].headers["authorization"] == "Bearer sk-client-0123456789"


def test_a_proxied_async_client_closes_each_loops_connections() -> None:
    """``AsyncClient(proxy=...)`` used once per ``asyncio.run()``, then closed from yet
    another loop: every loop's proxy connections are closed (no ResourceWarning, which
    pytest makes an error)."""
    pytest.importorskip("httpx")
    proxy = KeepAliveProxy()
    client = lmlink.AsyncClient(endpoint="http://llm.test/v1", model="m", proxy=proxy.url)
    for text in ("one", "two", "three"):
        assert asyncio.run(client.chat(text)).content == text

    async def last() -> str:
        answer = (await client.chat("four")).content
        await client.aclose()
        return answer

    assert asyncio.run(last()) == "four"
    proxy.close()
    gc.collect()


@pytest.mark.parametrize("limit", ["idle", "total"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stall_mid_stream_through_a_proxy_reports_the_limit_that_ran_out(
    kind: str, limit: str
) -> None:
    """Through the proxy, a stream that goes silent after its first delta ends in the limit
    that ran out, with its value (it said "idle timeout, 0 s" for both), as the direct
    transports say."""
    pytest.importorskip("httpx")
    proxy = KeepAliveProxy(stall=3.0)
    if limit == "idle":
        timeout = lmlink.Timeout(connect=2, idle=0.3)
    else:
        timeout = lmlink.Timeout(connect=2, idle=2.5, total=0.5)
    settings = {"endpoint": "http://llm.test/v1", "model": "m", "proxy": proxy.url}

    def run() -> None:
        if kind == "sync":
            with lmlink.Client(**settings, timeout=timeout) as client:
                client.chat_stream("hello")
            return

        async def go() -> None:
            async with lmlink.AsyncClient(**settings, timeout=timeout) as client:
                await client.chat_stream("hello")

        asyncio.run(go())

    with pytest.raises(lmlink.APITimeoutError) as info:
        run()
    proxy.close()
    exc = info.value
    assert exc.phase == limit
    if limit == "idle":
        assert exc.timeout == 0.3
        assert "0.3 s" in str(exc)
    else:
        assert exc.timeout is not None
        assert 0 < exc.timeout <= 0.5
        assert "deadline" in str(exc)
    assert isinstance(exc, lmlink.StreamError)
    assert exc.partial is not None
    assert exc.partial.content == "hello"


@pytest.mark.parametrize(
    "chunk",
    [{"detail": "model 'x' not found"}, {"message": "backend overloaded", "code": 500}],
    ids=["detail", "message"],
)
def test_a_stream_of_no_answer_quotes_what_the_server_sent(
    api: API, server: FakeServer, chunk: dict[str, object]
) -> None:
    """A stream whose chunks are no answer at all (no choices, no usage) ends in an error
    that quotes the server's words, as the same body does in a plain answer; they were
    dropped, leaving only "the stream ended before it finished"."""
    server.enqueue(_events(chunk))
    with pytest.raises(lmlink.StreamError) as info:
        api.chat_stream("q")
    said = str(next(iter(chunk.values())))
    assert said in str(info.value)
    server.enqueue(Reply(body=chunk))
    with pytest.raises(lmlink.LMLinkError, match=said.replace("'", ".")):
        api.chat("q")


def test_a_server_that_ignores_stream_true_still_feeds_on_reasoning(
    api: API, server: FakeServer
) -> None:
    """A streamed call answered with a whole JSON body (the server ignored ``"stream":
    true``): ``on_reasoning`` gets the reasoning as ``on_delta`` gets the text, as they would
    from a real stream."""
    server.enqueue(
        Reply(
            body={
                "choices": [
                    {
                        "message": {"content": "42", "reasoning_content": "think"},
                        "finish_reason": "stop",
                    }
                ]
            }
        )
    )
    text: list[str] = []
    thoughts: list[str] = []
    resp = api.chat_stream("q", on_delta=text.append, on_reasoning=thoughts.append)
    assert (resp.content, resp.reasoning) == ("42", "think")
    assert ("".join(text), "".join(thoughts)) == ("42", "think")


@pytest.mark.parametrize("mode", MODES)
def test_the_event_stream_media_type_is_read_whatever_its_case(
    api: API, server: FakeServer, mode: str
) -> None:
    """``Content-Type: Text/Event-Stream; charset=UTF-8`` is an event stream (media types
    are case-insensitive); it was read as a JSON body and failed, streamed or not."""
    chunk = {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}
    server.enqueue(_events(chunk, kind="Text/Event-Stream; charset=UTF-8"))
    assert _ask(api, mode, "q").content == "hi"


# -- proxy settings and errors -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("proxy", ["ftp://user:pw-0123456789@proxy:21", "not a url"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_proxy_url_httpx_cannot_use_is_a_configuration_error(kind: str, proxy: str) -> None:
    """A proxy URL with a scheme httpx has no transport for: ConfigurationError, at once
    and for both clients, without its password (it was httpx's raw ValueError, the async
    client's only at its first call)."""
    pytest.importorskip("httpx")
    settings = {"endpoint": "http://llm.test/v1", "model": "m", "proxy": proxy}

    async def make_async() -> None:
        lmlink.AsyncClient(**settings)

    def make() -> None:
        if kind == "sync":
            lmlink.Client(**settings)
        else:
            asyncio.run(make_async())

    with pytest.raises(lmlink.ConfigurationError, match="proxy") as info:
        make()
    assert "pw-0123456789" not in str(info.value)


def test_a_refused_proxy_is_named_with_the_same_error_in_both_clients(
    make_api: Callable[..., API],
) -> None:
    """Nothing listening at the proxy's port: APIConnectionError naming the proxy (not the
    server) and its reason "refused" in both clients (the async one said neither), with the
    proxy's password left out."""
    pytest.importorskip("httpx")
    proxy = f"http://user:pw-0123456789@127.0.0.1:{_free_port()}"
    api = make_api(endpoint="http://llm.test/v1", proxy=proxy, max_retries=0)
    with pytest.raises(lmlink.APIConnectionError) as info:
        api.chat("q")
    exc = info.value
    assert exc.reason == "refused"
    assert "is the proxy running?" in str(exc)
    assert "pw-0123456789" not in str(exc)


@pytest.mark.parametrize("mode", MODES)
def test_a_json_body_labelled_as_an_event_stream_is_quoted_in_the_error(
    api: API, server: FakeServer, mode: str
) -> None:
    """``Content-Type: text/event-stream`` over a bare JSON body (no ``data:`` lines): the
    error quotes what the server sent (it said only "the stream ended before it
    finished")."""
    server.enqueue(
        Reply(
            raw_body_chunks=[b'{"error": "worker crashed: CUDA out of memory"}'],
            headers={"Content-Type": "text/event-stream"},
        )
    )
    with pytest.raises(lmlink.StreamError, match="CUDA out of memory"):
        _ask(api, mode, "q")


@pytest.mark.parametrize("setting", ["endpoint", "proxy"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_url_that_cannot_be_read_is_a_configuration_error(kind: str, setting: str) -> None:
    """``http://[::1`` (a bracket left open) as the endpoint or the proxy: ConfigurationError,
    not the bare ValueError of urlsplit."""
    settings = {"endpoint": "http://127.0.0.1:9/v1", "model": "m", setting: "http://[::1"}

    async def make_async() -> None:
        lmlink.AsyncClient(**settings)

    def make() -> None:
        if kind == "sync":
            lmlink.Client(**settings)
        else:
            asyncio.run(make_async())

    with pytest.raises(lmlink.ConfigurationError, match="invalid"):
        make()

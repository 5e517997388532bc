"""How streams end and what follows them: servers that keep talking after ``[DONE]``,
text held back as a possible tag, stray bytes on a pooled connection, refusals that are
not refusals. Raw-socket servers on 127.0.0.1 play the misbehaving parts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import lmlink
from apis import API
from lmlink.testing import FakeServer, Reply
from raw_http import RawServer, Script


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_HELLO = b'data: {"choices":[{"delta":{"content":"Hello"},"finish_reason":"stop"}]}\n\n'


def _hello_then(after_done: Callable[[socket.socket], None]) -> Script:
    def script(n: int, sock: socket.socket) -> None:
        sock.sendall(_SSE_HEAD + _chunk(_HELLO) + _chunk(b"data: [DONE]\n\n"))
        after_done(sock)

    return script


def _hold_open(sock: socket.socket) -> None:
    time.sleep(30)  # never ends the body: the client must not wait for it


def _ping_forever(sock: socket.socket) -> None:
    for _ in range(300):  # keep-alive comments after [DONE], every 0.1 s, for 30 s
        time.sleep(0.1)
        sock.sendall(_chunk(b": ping\n\n"))


def _end_body(sock: socket.socket) -> None:
    sock.sendall(b"0\r\n\r\n")


@pytest.fixture
def raw() -> Iterator[Callable[[Script], RawServer]]:
    made: list[RawServer] = []

    def make(script: Script) -> RawServer:
        made.append(RawServer(script))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


@pytest.mark.parametrize("after", [_hold_open, _ping_forever], ids=["held-open", "pings"])
def test_a_stream_ends_at_done_even_if_the_body_does_not(
    make_api: Callable[..., API],
    raw: Callable[[Script], RawServer],
    after: Callable[[socket.socket], None],
) -> None:
    """After [DONE] the body may never end (a connection held open, keep-alive pings): the
    stream still ends, long before the 20 s idle timeout; the connection is not reused."""
    srv = raw(_hello_then(after))
    api = make_api(endpoint=srv.url, timeout=20.0)
    began = time.monotonic()
    deltas, stream = api.stream("hi")
    assert deltas == ["Hello"]
    assert stream.response.content == "Hello"
    assert api.chat_stream("again").content == "Hello"
    assert time.monotonic() - began < 10  # each would take 20 s (or forever) if it waited
    assert srv.connections == 2


def test_a_well_ended_stream_leaves_its_connection_for_the_next_call(
    make_api: Callable[..., API], raw: Callable[[Script], RawServer]
) -> None:
    """The usual case: [DONE] and then the end of the body: one connection serves all."""
    srv = raw(_hello_then(_end_body))
    api = make_api(endpoint=srv.url)
    for _ in range(3):
        assert api.chat_stream("hi").content == "Hello"
    assert srv.connections == 1


@pytest.mark.parametrize(
    ("deltas", "content"),
    [(["The answer is x", "<"], "The answer is x<"), (["  "], "  "), (["a <thi"], "a <thi")],
    ids=["lone-angle", "whitespace-only", "half-tag"],
)
def test_text_held_back_as_a_possible_tag_is_handed_out_at_the_end(
    api: API, server: FakeServer, deltas: list[str], content: str
) -> None:
    """Text that could have begun a <think> tag is held back; when the stream ends and it
    was not one, the iterator and on_delta get it too, so they add up to the content."""
    server.enqueue(Reply(deltas=deltas), Reply(deltas=deltas))
    seen: list[str] = []
    resp = api.chat_stream("hi", on_delta=seen.append)
    assert resp.content == content
    assert "".join(seen) == content
    got, stream = api.stream("hi")
    assert "".join(got) == content == stream.response.content


def test_stray_bytes_on_an_idle_connection_are_never_read_as_the_next_answer(
    make_api: Callable[..., API], raw: Callable[[Script], RawServer]
) -> None:
    """A server (or proxy) that writes more than its Content-Length said: the connection
    is not reused, so the next call gets its own answer, not the leftover bytes."""
    models = json.dumps({"data": [{"id": "m"}]}).encode()
    stale = json.dumps({"choices": [{"message": {"content": "STALE"}}]}).encode()
    fresh = json.dumps({"choices": [{"message": {"content": "fresh"}}]}).encode()

    def script(n: int, sock: socket.socket) -> None:
        body, extra = (models, stale) if n == 0 else (fresh, b"")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        if extra:
            time.sleep(0.05)  # after the client has read its answer
            stale_head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(extra)}\r\n\r\n"
            sock.sendall(stale_head.encode() + extra)

    srv = raw(script)
    api = make_api(endpoint=srv.url, max_retries=0)
    assert [m.id for m in api.models()] == ["m"]
    time.sleep(0.2)  # the stray response is on the idle connection now
    assert api.chat("hi").content == "fresh"


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_a_crash_that_names_a_parameter_is_not_a_refusal(
    make_api: Callable[..., API], server: FakeServer, streamed: bool
) -> None:
    """Ollama's 500 "model runner has unexpectedly stopped" holds "stop": it is a crash,
    not a refusal of ``stop``; nothing is dropped, nothing is sent again."""
    server.enqueue(Reply.error(500, "model runner has unexpectedly stopped"))
    api = make_api(max_retries=0)
    call = api.chat_stream if streamed else api.chat
    with pytest.raises(lmlink.APIStatusError):
        call("hi", stop=["\n\n"], seed=1)
    assert len(server.requests) == 1
    assert call("hi", stop=["\n\n"], seed=1).content
    last = server.requests[-1].json
    assert last is not None
    assert last["stop"] == ["\n\n"]
    assert last["seed"] == 1


def test_a_refusal_after_reasoning_was_handed_out_is_not_sent_again(
    make_api: Callable[..., API], raw: Callable[[Script], RawServer]
) -> None:
    """Reasoning reached on_reasoning, then an in-band 400 names a parameter: adapting
    would send the request again and repeat the reasoning, so the error is raised."""

    def script(n: int, sock: socket.socket) -> None:
        think = b'data: {"choices":[{"delta":{"reasoning_content":"Let me think. "}}]}\n\n'
        error = b'data: {"error":{"message":"unknown field chat_template_kwargs","code":400}}\n\n'
        sock.sendall(_SSE_HEAD + _chunk(think + error) + b"0\r\n\r\n")

    srv = raw(script)
    api = make_api(endpoint=srv.url, max_retries=0)
    seen: list[str] = []
    with pytest.raises(lmlink.StreamError) as info:
        api.chat_stream("hi", reasoning=False, on_reasoning=seen.append)
    assert seen == ["Let me think. "]
    assert srv.requests == 1
    assert info.value.partial is not None
    assert info.value.partial.reasoning == "Let me think. "


def test_calls_beyond_max_connections_wait_their_turn(server: FakeServer) -> None:
    """A shared client with fewer connections than calls queues them, however long the
    generations ahead take (here 1 s each, twice the idle timeout); none fails for waiting."""
    server.responder = lambda r: Reply(content="abcdefghijklmnopqrst", chunk_chars=1, delay=0.05)
    timeout = lmlink.Timeout(connect=1, idle=0.5)
    results: list[str] = []
    with lmlink.Client(
        endpoint=server.url, model="m", timeout=timeout, max_connections=1
    ) as client:
        threads = [
            threading.Thread(target=lambda: results.append(client.chat_stream("hi").content))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == ["abcdefghijklmnopqrst"] * 2

    async def main() -> list[str]:
        async with lmlink.AsyncClient(
            endpoint=server.url, model="m", timeout=timeout, max_connections=1
        ) as aclient:
            done = await asyncio.gather(*(aclient.chat_stream("hi") for _ in range(2)))
            return [r.content for r in done]

    assert asyncio.run(main()) == ["abcdefghijklmnopqrst"] * 2

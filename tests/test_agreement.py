"""Sync and async, streamed and plain agree: one answer decoder, one attempt loop, call
options as a value. Each test runs both shells (``make_api``) and, where it applies, both a
plain and a streamed call, against the fake server or a raw-socket one."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lmlink
from apis import API
from lmlink.testing import FakeServer, Reply
from raw_http import RawServer

MODES = ["plain", "stream"]


def _ask(api: API, mode: str, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
    if mode == "plain":
        return api.chat(*args, **kwargs)
    return api.chat_stream(*args, **kwargs)


def _stream_body(*chunks: dict[str, Any] | bytes) -> list[bytes]:
    out = []
    for c in chunks:
        data = c if isinstance(c, bytes) else json.dumps(c).encode()
        out.append(b"data: " + data + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _reply(mode: str, message: dict[str, Any] | bytes, finish: str = "stop") -> Reply:
    """One answer carrying ``message`` as the plain body's message, or as one stream delta."""
    if isinstance(message, bytes):  # a raw message object, possibly not valid UTF-8
        choice = b'{"index":0,"finish_reason":"%s","%s":%s}' % (
            finish.encode(),
            b"message" if mode == "plain" else b"delta",
            message,
        )
        body = b'{"object":"x","model":"m","choices":[' + choice + b"]}"
        if mode == "plain":
            return Reply(body=body, headers={"Content-Type": "application/json"})
        return Reply(
            raw_body_chunks=_stream_body(body), headers={"Content-Type": "text/event-stream"}
        )
    if mode == "plain":
        return Reply(
            body={"model": "m", "choices": [{"message": message, "finish_reason": finish}]}
        )
    return Reply(
        raw_body_chunks=_stream_body({"choices": [{"delta": message, "finish_reason": finish}]}),
        headers={"Content-Type": "text/event-stream"},
    )


# -- one answer decoder -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_ollama_thinking_field_is_reasoning_streamed_and_plain(
    api: API, server: FakeServer, mode: str
) -> None:
    """Ollama's "thinking" field lands in .reasoning whether the answer is streamed or not."""
    server.enqueue(_reply(mode, {"role": "assistant", "content": "42", "thinking": "hmm"}))
    resp = _ask(api, mode, "q")
    assert (resp.content, resp.reasoning) == ("42", "hmm")


@pytest.mark.parametrize("mode", MODES)
def test_vllm_error_object_is_the_typed_error_streamed_and_plain(
    api: API, server: FakeServer, mode: str
) -> None:
    """vLLM's {"object":"error"} is the server's typed error in a stream as in a plain body."""
    err = {
        "object": "error",
        "message": "This model's maximum context length is 4096 tokens",
        "code": 400,
    }
    if mode == "plain":
        server.enqueue(Reply(body=err, headers={"Content-Type": "application/json"}))
    else:
        server.enqueue(
            Reply(raw_body_chunks=_stream_body(err), headers={"Content-Type": "text/event-stream"})
        )
    with pytest.raises(lmlink.ContextLengthError, match="maximum context length"):
        _ask(api, mode, "q")


@pytest.mark.parametrize("mode", MODES)
def test_invalid_utf8_keeps_the_text_streamed_and_plain(
    api: API, server: FakeServer, mode: str
) -> None:
    """Invalid UTF-8 inside a content string becomes U+FFFD; the rest of the text stays."""
    server.enqueue(_reply(mode, b'{"role":"assistant","content":"ab\xff\xfecd"}'))
    resp = _ask(api, mode, "q")
    assert resp.content == "ab\ufffd\ufffdcd"


@pytest.mark.parametrize("mode", MODES)
def test_tool_calls_without_index_or_id_stay_apart_streamed_and_plain(
    api: API, server: FakeServer, mode: str
) -> None:
    """Two complete tool calls in one message are two calls, however they are delivered."""
    calls = [
        {"type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"type": "function", "function": {"name": "b", "arguments": '{"x": 1}'}},
    ]
    server.enqueue(_reply(mode, {"role": "assistant", "tool_calls": calls}, "tool_calls"))
    resp = _ask(api, mode, "q")
    assert [(c.name, c.arguments) for c in resp.tool_calls] == [("a", "{}"), ("b", '{"x": 1}')]


# -- text before a failure is handed out first ------------------------------------------------


def test_text_before_an_in_band_error_in_the_same_read_is_handed_out(
    api: API, server: FakeServer
) -> None:
    """Text that arrived in the same read as an in-band error reaches on_delta, then the
    error is raised."""
    hello = {"choices": [{"delta": {"content": "Hello"}}]}
    body = b"".join(_stream_body(hello, {"error": "backend exploded"})[:2])
    server.enqueue(Reply(raw_body_chunks=[body], headers={"Content-Type": "text/event-stream"}))
    seen: list[str] = []
    with pytest.raises(lmlink.StreamError, match="backend exploded") as info:
        api.chat_stream("q", on_delta=seen.append)
    assert seen == ["Hello"]
    assert info.value.partial is not None
    assert info.value.partial.content == "Hello"


def test_text_before_a_broken_frame_in_the_same_read_is_handed_out(
    make_api: Callable[..., API], raw: Callable[..., RawServer]
) -> None:
    """Text that arrived in the same read as a broken chunk frame is handed out first."""
    event = b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n'

    def script(n: int, sock: socket.socket) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(event), event)
            + b"zz-not-a-size\r\n"
        )

    srv = raw(script)
    api = make_api(endpoint=srv.url)
    seen: list[str] = []
    with pytest.raises(lmlink.APIConnectionError) as info:
        api.chat_stream("q", on_delta=seen.append)
    assert seen == ["Hello"]
    assert isinstance(info.value, lmlink.StreamError)


@pytest.fixture
def raw() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(script: Any) -> RawServer:
        made.append(RawServer(script))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


# -- call options -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_call_options_are_not_body_fields(api: API, server: FakeServer, mode: str) -> None:
    """timeout=, headers= and extra_body= act on the client; other keywords go in the body."""
    _ask(
        api,
        mode,
        "q",
        timeout=lmlink.Timeout(idle=5),
        headers={"X-Trace": "t-1"},
        extra_body={"top_k": 3, "chat_template_kwargs": {"a": 1}},
        seed=7,
    )
    req = server.requests[-1]
    assert req.headers["x-trace"] == "t-1"
    assert {"top_k": 3, "seed": 7, "chat_template_kwargs": {"a": 1}}.items() <= req.json.items()
    assert not {"timeout", "headers", "extra_body"} & set(req.json)


@pytest.mark.parametrize("mode", MODES)
def test_a_per_call_timeout_applies(api: API, server: FakeServer, mode: str) -> None:
    """timeout=0.2 on one call bounds that call (the client's own is 5 s)."""
    server.enqueue(Reply(stall_before_headers=2.0))
    with pytest.raises(lmlink.APITimeoutError):
        _ask(api, mode, "q", timeout=0.2)
    assert "timeout" not in server.requests[-1].json


@pytest.mark.parametrize("how", ["keyword", "extra_body"])
def test_reserved_names_are_refused_not_sent(api: API, server: FakeServer, how: str) -> None:
    """Keywords the client owns cannot be smuggled into the body."""
    kwargs: dict[str, Any] = {"stream": True}
    if how == "extra_body":
        kwargs = {"extra_body": kwargs}
    with pytest.raises(lmlink.ConfigurationError, match="stream"):
        api.chat("q", **kwargs)
    assert server.requests == []


# -- timings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tokens_per_s_is_never_faster_than_the_whole_call(
    api: API, server: FakeServer, mode: str
) -> None:
    """tokens_per_s of a plain answer is measured over the whole call, not the gap between
    its head and its body."""
    server.enqueue(Reply(content="one two three four five six seven eight", usage=(3, 8)))
    resp = _ask(api, mode, "q")
    assert resp.latency_s is not None
    assert resp.output_tokens == 8
    if mode == "plain":
        assert resp.tokens_per_s == pytest.approx(8 / resp.latency_s)


# -- discovery, endpoints -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_no_endpoint_and_no_model_discovers_streamed_and_plain(
    make_api: Callable[..., API], server: FakeServer, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing configured, a streamed call discovers the local server like a plain one."""
    monkeypatch.setenv("LMLINK_NO_DISCOVERY", "0")
    monkeypatch.setenv("LMLINK_DISCOVER_PORTS", str(server.port))
    api = make_api(endpoint=None, model=None)
    server.enqueue(Reply(content="found you"))
    assert _ask(api, mode, "q").content == "found you"
    assert server.requests[-1].json["model"] == "fake-model"


@pytest.mark.parametrize("mode", MODES)
def test_no_endpoint_is_reported_before_no_model(make_api: Callable[..., API], mode: str) -> None:
    """With neither set (and discovery off), the error names the endpoint first."""
    api = make_api(endpoint=None, model=None)
    with pytest.raises(lmlink.ConfigurationError, match=r"^no endpoint"):
        _ask(api, mode, "q")


@pytest.mark.parametrize("tail", ["?api-version=1", "#frag", "?"])
def test_an_endpoint_with_a_query_or_fragment_is_refused(tail: str) -> None:
    """?query and #fragment would send requests to the wrong path: refused at once."""
    with pytest.raises(lmlink.ConfigurationError, match=r"query|fragment"):
        lmlink.Client(endpoint=f"http://127.0.0.1:1/v1{tail}")


# -- structured output ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_big_integers_stay_exact_in_parsed(api: API, server: FakeServer, mode: str) -> None:
    """An integer past 64 bits comes back exact, and still validates as an integer."""
    server.enqueue(Reply(content='{"account": 98765432109876543210, "n": 1.5}'))
    schema = {
        "type": "object",
        "properties": {"account": {"type": "integer"}, "n": {"type": "number"}},
    }
    resp = _ask(api, mode, "q", response_format=schema)
    assert resp.parsed == {"account": 98765432109876543210, "n": 1.5}
    assert type(resp.parsed["account"]) is int


@pytest.mark.parametrize("mode", MODES)
def test_response_format_json_parses(api: API, server: FakeServer, mode: str) -> None:
    """response_format="json" fills .parsed."""
    server.enqueue(Reply(content='```json\n{"a": [1, 2]}\n```'))
    assert _ask(api, mode, "q", response_format="json").parsed == {"a": [1, 2]}


def test_response_format_json_errors_like_a_schema(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """An answer that is not JSON is asked for again, then StructuredOutputError."""
    api = make_api(structured_retries=1)
    server.enqueue(Reply(content="sure thing"), Reply(content="still prose"))
    with pytest.raises(lmlink.StructuredOutputError) as info:
        api.chat("q", response_format="json")
    assert info.value.raw == "still prose"
    assert len(server.requests) == 2


# -- secrets ----------------------------------------------------------------------------------


def test_a_token_given_as_the_user_name_is_redacted(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """http://TOKEN@host/v1 sends Basic auth, and the token never shows in an error."""
    token = "tok-1234567890abcdef"
    server.enqueue(Reply.error(400, f"bad credentials {token}"))
    api = make_api(endpoint=server.url.replace("http://", f"http://{token}@"))
    with pytest.raises(lmlink.BadRequestError) as info:
        api.chat("q")
    assert server.requests[-1].headers["authorization"].startswith("Basic ")
    assert token not in str(info.value)
    assert token not in info.value.body


def test_a_key_echoed_json_escaped_is_redacted_in_the_body(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A key the server echoes with &, < and > JSON-escaped (as Go does) is blanked in the
    message and cannot be recovered from .body by json.loads."""
    key = "sk-a&b<c>d/é"
    escaped = json.dumps(key)[1:-1].replace("&", "\\u0026").replace("<", "\\u003c")
    escaped = escaped.replace(">", "\\u003e")
    body = '{"error": {"message": "invalid key ' + escaped + '", "type": "auth"}}'
    server.enqueue(Reply(status=401, body=body.encode()))
    api = make_api(api_key=key)
    with pytest.raises(lmlink.AuthenticationError) as info:
        api.chat("q")
    assert key not in str(info.value)
    assert key not in json.dumps(json.loads(info.value.body), ensure_ascii=False)
    assert "***" in info.value.body


# -- an early answer while sending ----------------------------------------------------------


def test_an_answer_before_the_body_was_read_is_reported(
    make_api: Callable[..., API], raw: Callable[..., RawServer]
) -> None:
    """A proxy that answers 413 without reading a 20 MB body: the client reports the 413."""

    def script(n: int, sock: socket.socket) -> None:
        raise AssertionError("the server never reads the body")

    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    import threading

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                    b'Connection: close\r\nContent-Length: 38\r\n\r\n{"error": "request entity too large"}\n'
                )

    threading.Thread(target=serve, daemon=True).start()
    try:
        api = make_api(endpoint=url)
        with pytest.raises(lmlink.APIStatusError) as info:
            api.chat("x" * (20 << 20))
        assert info.value.status_code == 413
    finally:
        listener.close()


# -- processes and loops ------------------------------------------------------------------------


def _echo(req: Any) -> str:
    return str(req.json["messages"][-1]["content"])


def test_one_async_client_on_two_loops_never_mixes_answers(server: FakeServer) -> None:
    """One AsyncClient driven from two event loops in two threads: every answer is its own."""
    import threading

    server.responder = _echo
    client = lmlink.AsyncClient(endpoint=server.url, model="fake-model", timeout=10.0)
    wrong: list[Any] = []
    both_done = threading.Barrier(2)
    closed = threading.Event()

    async def calls(tag: str) -> None:
        async def one(i: int) -> None:
            text = f"{tag}-{i}"
            got = (await client.chat(text)).content
            if got != text:
                wrong.append((text, got))

        await asyncio.gather(*(one(i) for i in range(40)))
        # Close once, from one loop, while the other still runs (its pool closes there).
        await asyncio.to_thread(both_done.wait)
        if tag == "a":
            await client.aclose()
            closed.set()
        else:
            await asyncio.to_thread(closed.wait)
        await asyncio.sleep(0.01)

    def run(tag: str) -> None:
        try:
            asyncio.run(calls(tag))
        except BaseException as exc:
            wrong.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_forked_child_never_uses_the_parents_connections(server: FakeServer) -> None:
    """After fork, the child opens its own connection: parent and child each read their
    own answers."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    server.responder = _echo
    client = lmlink.Client(endpoint=server.url, model="fake-model", timeout=10.0)
    assert client.chat("before").content == "before"
    opened = server.stats.connections_opened
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never through pytest
        ok = True
        try:
            for i in range(20):
                ok = ok and client.chat(f"child-{i}").content == f"child-{i}"
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    for i in range(20):
        assert client.chat(f"parent-{i}").content == f"parent-{i}"
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert server.stats.connections_opened > opened
    client.close()


# -- refused connections ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_never_answered_is_retried_within_max_retries(
    make_api: Callable[..., API],
) -> None:
    """Nothing listening, a total deadline of 5 minutes: after max_retries the call ends in
    APIConnectionError saying what to check, not a wait for the deadline."""
    lmlink.set_instant_retries(True)
    try:
        api = make_api(
            endpoint=f"http://127.0.0.1:{_free_port()}/v1",
            timeout=lmlink.Timeout(idle=60, total=300),
            retry=lmlink.RetryPolicy(max_retries=2, load_wait=300),
        )
        with pytest.raises(lmlink.APIConnectionError, match="is the server running"):
            api.chat("q")
    finally:
        lmlink.set_instant_retries(False)


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_answered_and_restarts_is_waited_for(
    make_api: Callable[..., API], mode: str
) -> None:
    """A server this client has heard from, restarting: with a deadline, its refusals are
    waited out (by time, not by max_retries)."""
    import threading

    srv = FakeServer(model="fake-model").start()
    api = make_api(
        endpoint=srv.url,
        timeout=lmlink.Timeout(idle=5, total=30),
        retry=lmlink.RetryPolicy(max_retries=0, backoff_max=0.1),
    )
    assert _ask(api, mode, "q").content
    srv.stop()
    timer = threading.Timer(0.5, srv.start)
    timer.start()
    try:
        srv_reply = _ask(api, mode, "again")
        assert srv_reply.content
    finally:
        timer.join()
        srv.stop()


def test_big_integers_stay_exact_in_the_extract_output_line(
    server: FakeServer, tmp_path: Any
) -> None:
    """lmlink extract writes an integer past 64 bits exactly in its output line, also when
    the answer comes from the cache."""
    from click.testing import CliRunner

    from lmlink.cli import main

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "account?"}) + "\n")
    server.responder = lambda r: Reply(content='{"n": 98765432109876543210}')
    for out in (tmp_path / "out.jsonl", tmp_path / "again.jsonl"):
        result = CliRunner().invoke(
            main,
            [
                "extract",
                str(src),
                "-o",
                str(out),
                "--schema",
                str(schema),
                "--cache",
                str(tmp_path / "cache.db"),
                "-e",
                server.url,
                "-m",
                "fake-model",
            ],
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        results = [line for line in lines if "id" in line]
        assert [r["parsed"] for r in results] == [{"n": 98765432109876543210}]
    assert len(server.requests) == 1


def test_cli_chat_json_checks_the_answer(server: FakeServer) -> None:
    """lmlink chat --json fails like --schema when the answer is not JSON, and passes it
    through when it is."""
    from click.testing import CliRunner

    from lmlink.cli import main

    args = ["chat", "--json", "q", "-e", server.url, "-m", "fake-model"]
    server.enqueue(Reply(content="not json at all"))
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "does not match the requested schema" in result.output
    server.enqueue(Reply(content='{"ok": true}'))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert '{"ok": true}' in result.output

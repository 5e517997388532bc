"""Tests of lmlink.testing, the fake OpenAI-compatible server, using only the stdlib as client.

Nothing else from lmlink is imported here: the fake server must stand on its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmlink
from lmlink.testing import CANNED_REPLY, DIALECTS, FakeServer, Faults, RecordedRequest, Reply
from lmlink.testing import _pytest as plugin

# The plugin's fixture, made visible to this module (the entry point may not be installed).
lmlink_server_fixture = plugin.lmlink_server

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello"}]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def srv(lmlink_server: FakeServer) -> FakeServer:
    """The server under test (started by the plugin's fixture)."""
    return lmlink_server


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll until ``predicate()`` holds; fail the test after a generous 10 s."""
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


@contextlib.contextmanager
def connect(srv: FakeServer) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def request(
    srv: FakeServer,
    method: str,
    path: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    body = None if payload is None else json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    with connect(srv) as conn:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def chat(srv: FakeServer, **fields: Any) -> tuple[int, dict[str, str], bytes]:
    return request(srv, "POST", CHAT, {"model": "fake-model", "messages": MESSAGES, **fields})


def sse(body: bytes) -> list[tuple[str, str]]:
    """Naive SSE parse: (field, value) pairs of every non-blank line, comments included."""
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for line in text.split("\n"):
        if line:
            name, _, value = line.partition(":")
            out.append((name, value[1:] if value.startswith(" ") else value))
    return out


def data_events(body: bytes) -> list[str]:
    return [value for name, value in sse(body) if name == "data"]


def chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a stream ([DONE] excluded)."""
    return [json.loads(d) for d in data_events(body) if d != "[DONE]"]


def text_of(stream: list[dict[str, Any]], key: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in stream if c.get("choices"))


def finishes(stream: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in stream
        if c.get("choices") and c["choices"][0].get("finish_reason")
    ]


def raw_exchange(srv: FakeServer, data: bytes) -> bytes:
    """Send bytes on a raw socket and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while block := sock.recv(65536):
            received += block
        return received


def chat_bytes(payload: dict[str, Any], extra: str = "", version: str = "HTTP/1.1") -> bytes:
    body = json.dumps({"messages": MESSAGES, **payload}).encode()
    head = f"POST {CHAT} {version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """Split a chunked body into its chunks; the flag says whether the 0-chunk ended it."""
    pieces: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return pieces, True
        pieces.append(rest[:size])
        body = rest[size + 2 :]
    return pieces, False


def split_response(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode(), body


# -- plain answers and routing ----------------------------------------------------------------


def test_plain_body_shape(srv: FakeServer) -> None:
    """A plain request gets a chat.completion body with message, finish_reason and usage."""
    srv.enqueue(Reply(content="Hello there"))
    status, headers, data = chat(srv)
    body = json.loads(data)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-model"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_default_reply_is_canned(srv: FakeServer) -> None:
    """With an empty queue and no responder the answer is the canned sentence."""
    body = json.loads(chat(srv)[2])
    assert body["choices"][0]["message"]["content"] == CANNED_REPLY


def test_queue_then_responder_then_default(srv: FakeServer) -> None:
    """Queued replies go first (FIFO), then the responder, and a None from it means default."""
    srv.enqueue(Reply(content="one"), "two")
    answers: list[str | None] = ["SHOUT", None]
    srv.responder = lambda req: answers.pop(0)
    got = [json.loads(chat(srv)[2])["choices"][0]["message"]["content"] for _ in range(4)]
    assert got == ["one", "two", "SHOUT", CANNED_REPLY]
    assert srv.pending == 0


def test_responder_sees_request(srv: FakeServer) -> None:
    """The responder gets the recorded request and can echo it."""
    srv.responder = lambda req: Reply(content=req.json["messages"][-1]["content"].upper())
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] == "SAY HELLO"


def test_responder_exception_gives_500(srv: FakeServer) -> None:
    """A responder that raises produces a 500 JSON error and lands in srv.errors."""

    def broken(req: RecordedRequest) -> Reply:
        raise KeyError("boom")

    srv.responder = broken
    status, _, data = chat(srv)
    assert status == 500
    assert "KeyError" in json.loads(data)["error"]["message"]
    assert isinstance(srv.errors[0], KeyError)
    assert srv.stats.server_errors == 1


def test_route_without_v1_prefix(srv: FakeServer) -> None:
    """POST /chat/completions (no /v1) is served too."""
    status, _, data = request(srv, "POST", "/chat/completions", {"messages": MESSAGES})
    assert status == 200
    assert json.loads(data)["object"] == "chat.completion"


def test_models_and_health_routes(srv: FakeServer) -> None:
    """/v1/models, /models, /v1/models/{id} and /health answer like the real servers."""
    srv.models = ["fake-model", "other"]
    status, _, data = request(srv, "GET", "/v1/models")
    listing = json.loads(data)
    assert status == 200
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake-model", "other"]
    assert listing["data"][0]["object"] == "model"
    assert json.loads(request(srv, "GET", "/models")[2]) == listing
    assert json.loads(request(srv, "GET", "/v1/models/other")[2])["id"] == "other"
    assert request(srv, "GET", "/v1/models/missing")[0] == 404
    status, _, data = request(srv, "GET", "/health")
    assert (status, data) == (200, b'{"status":"ok"}')


def test_unknown_route_and_wrong_method(srv: FakeServer) -> None:
    """Unknown routes get a 404 JSON error; GET on the chat route a 405."""
    status, headers, data = request(srv, "GET", "/v1/nothing")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(data)["error"]["type"] == "not_found_error"
    assert request(srv, "GET", CHAT)[0] == 405


def test_bad_json_is_400_and_keeps_queue(srv: FakeServer) -> None:
    """A body that is not a JSON object gets 400 and does not consume a queued reply."""
    srv.enqueue(Reply(content="kept"))
    with connect(srv) as conn:
        conn.request("POST", CHAT, body=b"{not json", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 400
        assert "Invalid JSON" in json.loads(resp.read())["error"]["message"]
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] == "kept"


def test_api_key(srv: FakeServer) -> None:
    """With api_key set, chat and models want the Bearer token; health stays open."""
    srv.api_key = "sekret"
    assert chat(srv)[0] == 401
    assert request(srv, "GET", "/v1/models")[0] == 401
    assert request(srv, "GET", "/health")[0] == 200
    ok = request(srv, "POST", CHAT, {"messages": MESSAGES}, {"Authorization": "Bearer sekret"})
    assert ok[0] == 200


def test_requests_recorded(srv: FakeServer) -> None:
    """Requests are recorded with method, path, query, lower-cased headers, body and json."""
    request(srv, "POST", CHAT + "?trace=1", {"messages": MESSAGES}, {"X-Trace-Id": "abc"})
    request(srv, "GET", "/v1/models")
    first, second = srv.wait_for_requests(2)
    assert (first.method, first.path, first.query) == ("POST", CHAT, "trace=1")
    assert first.headers["x-trace-id"] == "abc"
    assert json.loads(first.body) == first.json == {"messages": MESSAGES}
    assert (second.method, second.path, second.json, second.body) == (
        "GET",
        "/v1/models",
        None,
        b"",
    )
    assert srv.stats.requests == 2
    assert srv.stats.chat_requests == 1


def test_wait_for_requests_times_out(srv: FakeServer) -> None:
    """wait_for_requests raises TimeoutError when too few requests arrive."""
    with pytest.raises(TimeoutError):
        srv.wait_for_requests(1, timeout=0.01)


def test_reset_forgets_everything(srv: FakeServer) -> None:
    """reset() clears the queue, the recorded requests and the counters."""
    srv.enqueue(Reply(content="x"), Reply(content="y"))
    chat(srv)
    srv.reset()
    assert (srv.pending, srv.requests, srv.stats.requests) == (0, [], 0)


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_framing_per_dialect(srv: FakeServer, dialect: str) -> None:
    """Each dialect streams well-formed SSE whose deltas rebuild the content, then [DONE]."""
    content = "The quick brown fox jumps over the lazy dog."
    srv.enqueue(Reply(content=content, dialect=dialect))  # type: ignore[arg-type]
    status, headers, data = chat(srv, stream=True)
    stream = chunks(data)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert data_events(data)[-1] == "[DONE]"
    assert text_of(stream) == content
    assert finishes(stream) == ["stop"]
    assert all(c["object"] == "chat.completion.chunk" for c in stream)
    deltas = [c["choices"][0]["delta"] for c in stream]
    if dialect == "tgi":
        assert all(c["id"] == "" for c in stream)
        assert all(d["role"] == "assistant" for d in deltas)
        assert stream[-1]["choices"][0]["finish_reason"] == "stop"  # on the last token chunk
    elif dialect == "mlx":
        assert all(d["role"] == "assistant" for d in deltas)
        assert ("", "keepalive 256/512") in sse(data)
        assert ": " in data_events(data)[0]  # json.dumps spacing
        assert "transfer-encoding" not in headers
    elif dialect == "sglang":
        assert all(set(d) == {"role", "content", "reasoning_content", "tool_calls"} for d in deltas)
        assert all("matched_stop" in c["choices"][0] for c in stream)
    elif dialect == "llamacpp":
        assert list(stream[0]) == [
            "choices",
            "created",
            "id",
            "model",
            "system_fingerprint",
            "object",
        ]
        assert deltas[0] == {"role": "assistant", "content": None}
        assert "timings" in stream[-1]
        assert headers["server"] == "llama.cpp"
    elif dialect == "vllm":
        assert "stop_reason" in stream[-1]["choices"][0]
    elif dialect == "ollama":
        assert deltas[0]["role"] == "assistant"
        assert deltas[0]["content"] == "The quick brown "
        assert stream[0]["system_fingerprint"] == "fp_ollama"
    else:
        assert deltas[0] == {"role": "assistant", "content": "", "refusal": None}
        assert deltas[-1] == {}


def test_stream_plain_modes_share_reply(srv: FakeServer) -> None:
    """The same Reply answers plain requests with a body and stream requests with chunks."""
    srv.default = Reply(content="same text", dialect="ollama")
    plain = json.loads(chat(srv)[2])
    streamed = chunks(chat(srv, stream=True)[2])
    assert plain["choices"][0]["message"]["content"] == text_of(streamed) == "same text"
    assert srv.stats.streams_started == srv.stats.streams_completed == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_include_usage_only_when_asked(srv: FakeServer, dialect: str) -> None:
    """A usage chunk with choices [] comes last only when stream_options.include_usage is set."""
    srv.default = Reply(content="one two three", usage=(7, 3), dialect=dialect)  # type: ignore[arg-type]
    without = chunks(chat(srv, stream=True)[2])
    assert all(not c.get("usage") for c in without)
    with_usage = chunks(chat(srv, stream=True, stream_options={"include_usage": True})[2])
    last = with_usage[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert all(not c.get("usage") for c in with_usage[:-1])
    if dialect == "mlx":
        assert last["object"] == "chat.completion"


def test_usage_none_omits_usage(srv: FakeServer) -> None:
    """usage=None leaves usage out of plain bodies and streams."""
    srv.default = Reply(usage=None)
    assert "usage" not in json.loads(chat(srv)[2])
    stream = chunks(chat(srv, stream=True, stream_options={"include_usage": True})[2])
    assert all(c["choices"] for c in stream)


def test_chunk_chars_and_explicit_deltas(srv: FakeServer) -> None:
    """chunk_chars fixes the delta size; deltas gives them verbatim."""
    srv.enqueue(Reply(content="abcdefg", chunk_chars=3), Reply(deltas=["He", "llo", "", "!"]))
    first = [c["choices"][0]["delta"].get("content") for c in chunks(chat(srv, stream=True)[2])]
    assert first[1:-1] == ["abc", "def", "g"]
    second = chunks(chat(srv, stream=True)[2])
    assert [c["choices"][0]["delta"].get("content") for c in second][1:-1] == ["He", "llo", "", "!"]
    srv.enqueue(Reply(deltas=["He", "llo"]))
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] == "Hello"


def test_send_finish_and_send_done_off(srv: FakeServer) -> None:
    """send_finish=False drops the finish chunk and send_done=False drops [DONE]."""
    srv.enqueue(Reply(content="hi", send_finish=False, send_done=False))
    data = chat(srv, stream=True)[2]
    assert finishes(chunks(data)) == []
    assert "[DONE]" not in data_events(data)


@pytest.mark.parametrize("ending", ["\r\n", "\r", "mixed"])
def test_line_endings_and_comments(srv: FakeServer, ending: str) -> None:
    """line_ending changes every line terminator; comments add ': ping' lines."""
    srv.enqueue(Reply(content="hi", line_ending=ending, comments=True))  # type: ignore[arg-type]
    data = chat(srv, stream=True)[2]
    if ending == "mixed":
        assert b"data: [DONE]\n\n" in data
        assert b": ping - " in data
        assert b"\r\n\r\ndata: " in data  # CRLF after a comment, LF after data
    else:
        assert data.endswith(b"data: [DONE]" + ending.encode() * 2)
        rest = data.replace(ending.encode(), b"")
        assert b"\n" not in rest
        assert b"\r" not in rest
    assert text_of(chunks(data)) == "hi"
    assert sum(1 for name, _ in sse(data) if name == "") == len(data_events(data))


def test_paced_stream_completes(srv: FakeServer) -> None:
    """delay paces the chunks; the stream still arrives whole."""
    srv.enqueue(Reply(content="slow but steady wins", chunk_chars=4, delay=0.002))
    assert text_of(chunks(chat(srv, stream=True)[2])) == "slow but steady wins"
    assert srv.stats.streams_completed == 1


def test_keep_alive_and_pipelining(srv: FakeServer) -> None:
    """Several requests share one connection, and pipelined ones are answered in order."""
    with connect(srv) as conn:
        for _ in range(3):
            conn.request("GET", "/health")
            assert conn.getresponse().read() == b'{"status":"ok"}'
    assert srv.stats.connections_opened == 1
    srv.enqueue(Reply(content="first", delay=0.001), Reply(content="second"))
    both = chat_bytes({"stream": True}) + chat_bytes({}, "Connection: close\r\n")
    raw = raw_exchange(srv, both)
    assert raw.index(b'"first"') < raw.index(b'"second"')


# -- reasoning and tools ----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning"])
def test_reasoning_fields(srv: FakeServer, style: str) -> None:
    """Reasoning goes to the named field in plain bodies and in stream deltas."""
    srv.default = Reply(reasoning="Let me think.", content="42", reasoning_style=style)  # type: ignore[arg-type]
    message = json.loads(chat(srv)[2])["choices"][0]["message"]
    assert (message[style], message["content"]) == ("Let me think.", "42")
    stream = chunks(chat(srv, stream=True)[2])
    assert text_of(stream, style) == "Let me think."
    assert text_of(stream) == "42"


@pytest.mark.parametrize(
    ("style", "expected"),
    [("think", "<think>Hmm.</think>42"), ("think_no_open", "Hmm.</think>42")],
)
def test_inline_think_tags(srv: FakeServer, style: str, expected: str) -> None:
    """think styles put the reasoning inline in content, with or without the opening tag."""
    srv.default = Reply(reasoning="Hmm.", content="42", reasoning_style=style)  # type: ignore[arg-type]
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] == expected
    stream = chunks(chat(srv, stream=True)[2])
    assert text_of(stream) == expected
    assert {"content": "</think>"} in [c["choices"][0]["delta"] for c in stream]


TOOLS: list[dict[str, Any]] = [
    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    {"name": "get_time", "arguments": {"tz": "UTC"}},
]


def tool_fragments(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        f for c in stream if c["choices"] for f in c["choices"][0]["delta"].get("tool_calls") or ()
    ]


def test_tool_calls_plain(srv: FakeServer) -> None:
    """Plain bodies carry whole tool calls, content null and finish_reason tool_calls."""
    srv.enqueue(Reply(tool_calls=TOOLS))
    choice = json.loads(chat(srv)[2])["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert calls[0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": TOOLS[0]["arguments"]},
    }
    assert json.loads(calls[1]["function"]["arguments"]) == {"tz": "UTC"}
    assert calls[1]["id"]


def test_tool_call_fragments_openai_style(srv: FakeServer) -> None:
    """Streamed tool calls: id and name only in the first fragment, arguments split by index."""
    srv.enqueue(Reply(tool_calls=TOOLS))
    stream = chunks(chat(srv, stream=True)[2])
    frags = tool_fragments(stream)
    assert finishes(stream) == ["tool_calls"]
    for index, call in enumerate(TOOLS):
        mine = [f for f in frags if f["index"] == index]
        assert len(mine) >= 2
        assert mine[0]["function"]["name"] == call["name"]
        assert all("id" not in f and "name" not in f["function"] for f in mine[1:])
        args = "".join(f["function"]["arguments"] for f in mine)
        sent = call["arguments"]
        assert json.loads(args) == (json.loads(sent) if isinstance(sent, str) else sent)


@pytest.mark.parametrize("dialect", ["ollama", "mlx"])
def test_whole_tool_calls_in_one_delta(srv: FakeServer, dialect: str) -> None:
    """Ollama and mlx-lm send each tool call whole in a single delta."""
    srv.enqueue(Reply(tool_calls=TOOLS[:1], dialect=dialect))  # type: ignore[arg-type]
    frags = tool_fragments(chunks(chat(srv, stream=True)[2]))
    assert len(frags) == 1
    assert frags[0]["function"]["arguments"] == TOOLS[0]["arguments"]


def test_sglang_and_tgi_tool_quirks(srv: FakeServer) -> None:
    """SGLang repeats id/name as null; TGI repeats id and sends no finish_reason at all."""
    srv.enqueue(
        Reply(tool_calls=TOOLS[:1], dialect="sglang"), Reply(tool_calls=TOOLS[:1], dialect="tgi")
    )
    sglang = tool_fragments(chunks(chat(srv, stream=True)[2]))
    assert all(f["id"] is None and f["function"]["name"] is None for f in sglang[1:])
    tgi_stream = chunks(chat(srv, stream=True)[2])
    tgi = tool_fragments(tgi_stream)
    assert all(f["id"] == "call_a" for f in tgi)
    assert [f["function"]["name"] for f in tgi][:2] == ["get_weather", None]
    assert finishes(tgi_stream) == []


def test_tool_index_missing(srv: FakeServer) -> None:
    """tool_index_missing drops index from every fragment (a real server bug)."""
    srv.enqueue(Reply(tool_calls=TOOLS, tool_index_missing=True))
    frags = tool_fragments(chunks(chat(srv, stream=True)[2]))
    assert frags
    assert all("index" not in f for f in frags)


# -- HTTP errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (
            "openai",
            {
                "error": {
                    "message": "too long",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": 400,
                }
            },
        ),
        (
            "flat",
            {
                "object": "error",
                "message": "too long",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        ),
        ("string", {"error": "too long"}),
        ("tgi", {"error": "too long", "error_type": "validation"}),
        ("detail", {"detail": "too long"}),
    ],
)
def test_error_json_shapes(srv: FakeServer, shape: str, expected: dict[str, Any]) -> None:
    """Reply.error builds every JSON error body shape that real servers use."""
    srv.enqueue(Reply.error(400, "too long", shape=shape))  # type: ignore[arg-type]
    status, headers, data = chat(srv, stream=True)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(data) == expected


def test_error_text_and_empty_bodies(srv: FakeServer) -> None:
    """text errors are text/plain; empty ones have no body at all (TGI's 401)."""
    srv.enqueue(
        Reply.error(422, "Failed to deserialize", shape="text"), Reply.error(401, shape="empty")
    )
    status, headers, data = chat(srv)
    assert (status, data) == (422, b"Failed to deserialize")
    assert headers["content-type"].startswith("text/plain")
    status, headers, data = chat(srv)
    assert (status, data, headers["content-length"]) == (401, b"", "0")


def test_retry_after_header(srv: FakeServer) -> None:
    """retry_after becomes a Retry-After header, fractional seconds kept as written."""
    srv.enqueue(
        Reply.error(429, "slow down", retry_after=0.5),
        Reply(status=503, headers={"Retry-After": "1"}),
    )
    status, headers, data = chat(srv)
    assert (status, headers["retry-after"]) == (429, "0.5")
    assert json.loads(data)["error"]["type"] == "rate_limit_error"
    status, headers, data = chat(srv)
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(data)["error"]["message"] == "Service Unavailable"


def test_verbatim_body_with_headers(srv: FakeServer) -> None:
    """body is sent as-is with the given status and headers."""
    srv.enqueue(Reply(status=404, body=b"Not Found", headers={"X-Powered-By": "Express"}))
    status, headers, data = chat(srv)
    assert (status, data, headers["x-powered-by"]) == (404, b"Not Found", "Express")


def test_body_override_inband_error_on_200(srv: FakeServer) -> None:
    """body_override answers plain requests with HTTP 200 and an in-band error body."""
    srv.default = Reply(body_override={"error": "Unexpected endpoint or method."})
    status, _, data = chat(srv)
    assert (status, json.loads(data)) == (200, {"error": "Unexpected endpoint or method."})
    assert finishes(chunks(chat(srv, stream=True)[2])) == ["stop"]  # streams are unaffected


def test_loading_mode(srv: FakeServer) -> None:
    """set_loading answers chat (and health) with llama.cpp's 503 while models still works."""
    srv.set_loading(60, retry_after=2)
    assert srv.loading
    status, headers, data = chat(srv)
    assert status == 503
    assert headers["retry-after"] == "2"
    assert json.loads(data) == {
        "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
    }
    assert request(srv, "GET", "/health")[0] == 503
    assert request(srv, "GET", "/v1/models")[0] == 200
    srv.set_loading(0)
    assert chat(srv)[0] == 200


# -- faults -----------------------------------------------------------------------------------


def test_cut_after_leaves_chunked_body_open(srv: FakeServer) -> None:
    """cut_after=N sends N chunks, then closes without the terminating 0-chunk."""
    srv.enqueue(Reply(content="one two three four five six seven", chunk_chars=4, cut_after=2))
    head, body = split_response(raw_exchange(srv, chat_bytes({"stream": True})))
    pieces, complete = dechunk(body)
    assert "Transfer-Encoding: chunked" in head
    assert not complete
    assert len(chunks(b"".join(pieces))) == 2
    assert srv.stats.cuts == 1
    assert srv.stats.client_disconnects == 0


def test_cut_is_an_error_for_http_client(srv: FakeServer) -> None:
    """A stdlib client sees the cut stream as an incomplete read."""
    srv.enqueue(Reply(cut_after=1))
    with connect(srv) as conn:
        conn.request("POST", CHAT, body=json.dumps({"messages": MESSAGES, "stream": True}))
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        resp.close()


def test_cut_before_body(srv: FakeServer) -> None:
    """cut_before_body sends the headers and hangs up."""
    srv.enqueue(Reply(cut_before_body=True))
    head, body = split_response(raw_exchange(srv, chat_bytes({})))
    assert head.startswith("HTTP/1.1 200 OK")
    assert "Content-Length: " in head
    assert body == b""


def read_until(sock: socket.socket, marker: bytes, count: int) -> bytes:
    data = b""
    while data.count(marker) < count:
        block = sock.recv(65536)
        assert block, "connection closed early"
        data += block
    return data


def test_stall_after_holds_connection(srv: FakeServer) -> None:
    """stall_after=N sends N chunks then holds; other clients are still served; leaving counts."""
    srv.enqueue(Reply(content="a b c d e f g h", chunk_chars=2, stall_after=2))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(chat_bytes({"stream": True}))
        got = read_until(sock, b"data: ", 2)
        wait_until(lambda: srv.stats.stalls == 1, "the stall")
        assert chat(srv)[0] == 200  # the server is not blocked
        wait_until(lambda: srv.stats.active_connections == 1, "the other client to leave")
        assert got.count(b"data: ") == 2
    wait_until(lambda: srv.stats.client_disconnects == 1, "the disconnect")
    assert srv.stats.streams_completed == 0


def test_stall_plain_and_before_headers(srv: FakeServer) -> None:
    """stall holds a plain request unanswered; stall_before_headers only delays the answer."""
    srv.enqueue(Reply(stall=True), Reply(stall_before_headers=0.01, content="late"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(chat_bytes({}))
        wait_until(lambda: srv.stats.stalls == 1, "the stall")
        body = json.loads(chat(srv)[2])
        assert body["choices"][0]["message"]["content"] == "late"
    wait_until(lambda: srv.stats.client_disconnects == 1, "the disconnect")


def test_client_disconnect_mid_stream_counted(srv: FakeServer) -> None:
    """A client that leaves in the middle of a paced stream is counted."""
    srv.enqueue(Reply(content="x" * 200, chunk_chars=1, delay=0.01))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(chat_bytes({"stream": True}))
        read_until(sock, b"data: ", 2)
    wait_until(lambda: srv.stats.client_disconnects == 1, "the disconnect")
    assert srv.stats.streams_started == 1
    assert srv.stats.streams_completed == 0


def test_malformed_chunks(srv: FakeServer) -> None:
    """malformed_at inserts a non-JSON data event before the listed chunks."""
    srv.enqueue(Reply(content="hello world", malformed_at=[0, 2]))
    events = data_events(chat(srv, stream=True)[2])
    bad = [i for i, e in enumerate(events) if e != "[DONE]" and not e.endswith("}")]
    assert bad == [0, 3]
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[0])


@pytest.mark.parametrize("send_done", [True, False])
def test_inband_error(srv: FakeServer, send_done: bool) -> None:
    """error_at=N sends N chunks, a data: {"error": ...} event, then [DONE] if send_done."""
    srv.enqueue(Reply(content="a b c d e f g h i", error_at=2, send_done=send_done))
    status, _, data = chat(srv, stream=True)
    events = data_events(data)
    assert status == 200
    assert len(events) == 3 + send_done
    assert json.loads(events[2])["error"]["message"]
    assert (events[-1] == "[DONE]") is send_done
    assert srv.stats.streams_completed == 1  # the HTTP body itself ends cleanly


def test_inband_error_custom_body_and_dialect(srv: FakeServer) -> None:
    """error_body replaces the error JSON; dialects default to their own error shape."""
    custom = {"error": {"code": "server_error", "message": "backend died", "type": "server_error"}}
    srv.enqueue(Reply(error_at=0, error_body=custom), Reply(error_at=1, dialect="tgi"))
    assert json.loads(data_events(chat(srv, stream=True)[2])[0]) == custom
    tgi = json.loads(data_events(chat(srv, stream=True)[2])[1])
    assert tgi["error"]["http_status_code"] == 422


def test_legacy_error_field(srv: FakeServer) -> None:
    """legacy_error writes llama.cpp's old 'error:' SSE field, then data: [DONE]."""
    srv.enqueue(Reply(legacy_error=True, dialect="llamacpp"))
    fields = sse(chat(srv, stream=True)[2])
    assert [name for name, _ in fields] == ["error", "data"]
    assert json.loads(fields[0][1])["error"]["type"] == "server_error"
    assert fields[1] == ("data", "[DONE]")


def test_faults_are_deterministic(srv: FakeServer) -> None:
    """The same seed yields the same sequence of faults."""

    def run() -> list[str | None]:
        faults = Faults(seed=7, p_503=0.3, p_cut=0.2, p_malformed=0.2)
        return [faults.apply(Reply(), stream=True)[1] for _ in range(50)]

    first = run()
    assert first == run()
    assert {"503", "cut", "malformed", None} <= set(first)


def test_faults_applied_by_server(srv: FakeServer) -> None:
    """srv.faults injects 503s with Retry-After, counts them, and spares faulty replies."""
    srv.faults = Faults(seed=1, p_503=1.0, retry_after=0.1)
    status, headers, _ = chat(srv)
    assert (status, headers["retry-after"]) == (503, "0.1")
    srv.enqueue(Reply(status=418))
    assert chat(srv)[0] == 418
    assert srv.stats.faults == {"503": 1}


def test_fault_kinds_in_streams(srv: FakeServer) -> None:
    """Random cut faults cut streams; malformed ones break a chunk."""
    srv.faults = Faults(seed=2, p_cut=1.0)
    _, body = split_response(raw_exchange(srv, chat_bytes({"stream": True})))
    assert not dechunk(body)[1]
    srv.faults = Faults(seed=2, p_malformed=1.0)
    events = data_events(chat(srv, stream=True)[2])
    assert any(not e.endswith("}") and e != "[DONE]" for e in events)


# -- byte-level replay ------------------------------------------------------------------------


def test_raw_reply_bytes_verbatim(srv: FakeServer) -> None:
    """raw is written byte for byte and the connection closed."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: [DONE]\n\n"
    srv.enqueue(Reply(raw=raw))
    assert raw_exchange(srv, chat_bytes({"stream": True})) == raw


def test_raw_body_chunks_http10(srv: FakeServer) -> None:
    """raw_body_chunks with http10 gives a close-delimited HTTP/1.0 response."""
    pieces = [b'data: {"a"', b":1}\n\ndata: [DONE]\n\n"]
    srv.enqueue(Reply(raw_body_chunks=pieces, http10=True))
    head, body = split_response(raw_exchange(srv, chat_bytes({"stream": True})))
    assert head.startswith("HTTP/1.0 200 OK")
    assert "Content-Length" not in head
    assert "Transfer-Encoding" not in head
    assert body == b"".join(pieces)


def test_raw_body_chunks_keep_boundaries(srv: FakeServer) -> None:
    """Without http10 each raw body chunk is one HTTP chunk, split mid-line as given."""
    pieces = [b"da", b'ta: {"x":1}\n', b"\ndata: [DONE]\n\n"]
    srv.enqueue(Reply(raw_body_chunks=pieces))
    raw = raw_exchange(srv, chat_bytes({"stream": True}, "Connection: close\r\n"))
    assert dechunk(split_response(raw)[1]) == (pieces, True)


def test_http10_client_gets_close_delimited_stream(srv: FakeServer) -> None:
    """An HTTP/1.0 client gets the stream without chunked encoding, ended by close."""
    head, body = split_response(raw_exchange(srv, chat_bytes({"stream": True}, version="HTTP/1.0")))
    assert "chunked" not in head
    assert data_events(body)[-1] == "[DONE]"


def test_chunked_upload_and_expect_continue(srv: FakeServer) -> None:
    """Chunked request bodies are decoded; Expect: 100-continue is honoured."""
    body = json.dumps({"messages": MESSAGES}).encode()
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(head.encode())
        assert read_until(sock, b"\r\n\r\n", 1).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        rest = b""
        while block := sock.recv(65536):
            rest += block
    assert b"200 OK" in rest
    assert srv.requests[0].json == {"messages": MESSAGES}


# -- lifecycle and load -----------------------------------------------------------------------


def test_restart_on_same_port() -> None:
    """stop() refuses connections; start() comes back on the same port."""
    server = FakeServer()
    with server:
        port = server.port
        assert chat(server)[0] == 200
    assert not server.running
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    with server:
        assert server.port == port
        assert chat(server)[0] == 200


def test_stop_drops_open_connections() -> None:
    """stop() closes held connections too (the client sees EOF or a reset)."""
    server = FakeServer().start()
    try:
        server.enqueue(Reply(stall=True))
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(chat_bytes({}))
            wait_until(lambda: server.stats.stalls == 1, "the stall")
            server.stop()
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
    finally:
        server.stop()


def test_hundred_concurrent_connections(srv: FakeServer) -> None:
    """100 connections open at once, each with a request in flight, all get answered."""
    srv.default = Reply(content="parallel", delay=0.001)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(100)]
    try:
        for sock in socks:
            sock.sendall(chat_bytes({"stream": True}, "Connection: close\r\n"))
        wait_until(lambda: srv.stats.connections_opened == 100, "100 connections")
        for sock in socks:
            data = b""
            while block := sock.recv(65536):
                data += block
            assert text_of(chunks(b"".join(dechunk(split_response(data)[1])[0]))) == "parallel"
    finally:
        for sock in socks:
            sock.close()
    assert srv.stats.streams_completed == 100


def test_many_threads_keep_alive(srv: FakeServer) -> None:
    """Threads hammering keep-alive connections all get correct answers."""
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(srv) as conn:
                for _ in range(20):
                    conn.request("POST", CHAT, body=json.dumps({"messages": MESSAGES}))
                    assert json.loads(conn.getresponse().read())["object"] == "chat.completion"
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert srv.stats.chat_requests == 320
    assert srv.stats.connections_opened == 16


def test_reply_validation() -> None:
    """Bad Reply arguments fail at construction, in the test's own thread."""
    with pytest.raises(ValueError, match="dialect"):
        Reply(dialect="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_chars"):
        Reply(chunk_chars=0)
    with pytest.raises(ValueError, match="shape"):
        Reply.error(400, shape="weird")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sum"):
        Faults(p_503=0.8, p_cut=0.5)
    for fault in ("cut_after", "stall_after", "error_at"):
        with pytest.raises(ValueError, match="count chunks"):
            Reply(**{fault: -1})
    with pytest.raises(ValueError, match="count chunks"):
        Reply(malformed_at=[2, -1])


def test_command_line_server() -> None:
    """python -m lmlink.testing prints its URL and serves until interrupted."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lmlink.testing", "--port", "0", "--model", "cli-model"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split()[3]
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)) as c:
                c.request("GET", "/v1/models")
                assert json.loads(c.getresponse().read())["data"][0]["id"] == "cli-model"
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0


def test_an_unknown_persona_is_a_clear_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown persona 'llama-server'.*llamacpp"):
        FakeServer(persona="llama-server")


def test_command_line_server_with_a_persona_counts_tokens() -> None:
    """``--persona vllm`` serves vLLM's tokenizer and window, so the README's
    count_tokens / context_length examples work from the shell."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lmlink.testing", "--port", "0", "--persona", "vllm"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "like vllm" in line
            with lmlink.Client(endpoint=line.split()[3], model="fake-model") as client:
                assert client.count_tokens("hello world") > 0
                assert client.context_length() == 4096
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0

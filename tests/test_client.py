"""The client against a real HTTP server (lmlink.testing.FakeServer), sync and async."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

import lmlink
from lmlink.testing import FakeServer, Reply

if TYPE_CHECKING:
    from apis import API


@pytest.fixture(autouse=True)
def _instant_retries() -> Any:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def test_chat_returns_content_usage_and_timings(api: API, server: FakeServer) -> None:
    """A plain chat gives content, usage, model, finish reason and timings."""
    server.enqueue(Reply(content="Hello there", usage=(7, 2)))
    resp = api.chat("Hi")
    assert resp.content == "Hello there"
    assert (resp.prompt_tokens, resp.output_tokens) == (7, 2)
    assert resp.finish_reason == "stop"
    assert resp.reasoning == ""
    assert resp.ttft_s is not None
    assert resp.latency_s is not None
    assert resp.latency_s >= resp.ttft_s


def test_request_body_has_only_given_fields(api: API, server: FakeServer) -> None:
    """temperature and max_tokens are sent only when given; the path is /chat/completions."""
    api.chat("Hi")
    api.chat("Hi", temperature=0.2, max_tokens=9)
    first, second = server.requests[-2:]
    assert first.path == "/v1/chat/completions"
    assert first.method == "POST"
    assert first.json is not None
    assert second.json is not None
    assert "temperature" not in first.json
    assert "max_tokens" not in first.json
    assert "stream" not in first.json
    assert (second.json["temperature"], second.json["max_tokens"]) == (0.2, 9)
    assert first.json["model"] == "fake-model"


@pytest.mark.parametrize(
    "messages",
    [
        "Hi",
        lmlink.Message("user", "Hi"),
        [{"role": "user", "content": "Hi"}],
        [lmlink.Message("system", "Be brief."), {"role": "user", "content": "Hi"}],
    ],
    ids=["str", "Message", "dicts", "mixed"],
)
def test_message_forms(api: API, server: FakeServer, messages: Any) -> None:
    """A str, a Message, dicts, or a mix all become OpenAI message dicts."""
    api.chat(messages)
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["messages"][-1] == {"role": "user", "content": "Hi"}


def test_api_key_sent_only_when_set(make_api: Callable[..., API], server: FakeServer) -> None:
    """No key, no Authorization header; with a key, a Bearer header; extra headers too."""
    make_api().chat("a")
    assert "authorization" not in server.requests[-1].headers
    make_api(api_key="sk-test-1234", headers={"X-Trace": "t1"}).chat("b")
    headers = server.requests[-1].headers
    assert headers["authorization"] == "Bearer sk-test-1234"
    assert headers["x-trace"] == "t1"


def test_echoed_key_never_leaks(
    make_api: Callable[..., API], server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server echoing the key in an error or a bad chunk never gets it into str/repr/logs."""
    key = "sk-very-secret-999"
    api = make_api(api_key=key)
    server.enqueue(Reply.error(401, f"bad key {key}"))
    with pytest.raises(lmlink.AuthenticationError) as info:
        api.chat("x")
    assert key not in str(info.value)
    assert key not in repr(info.value)
    assert key not in info.value.body
    assert key not in repr(api.client)
    server.enqueue(Reply(content="ok", malformed_at=[0]))
    with caplog.at_level(logging.DEBUG, logger="lmlink"):
        api.chat_stream("x")
    assert all(key not in r.getMessage() for r in caplog.records)


def test_stream_deltas_concatenate_to_content(api: API, server: FakeServer) -> None:
    """Stream deltas, on_delta calls and the aggregate all agree; include_usage is asked."""
    server.enqueue(Reply(content="one two three four five", chunk_chars=4, usage=(3, 5)))
    seen: list[str] = []
    resp = api.chat_stream("Count", on_delta=seen.append)
    assert "".join(seen) == resp.content == "one two three four five"
    assert len(seen) > 3
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (resp.prompt_tokens, resp.output_tokens) == (3, 5)


def test_stream_iterator_exposes_response(api: API, server: FakeServer) -> None:
    """`with client.stream() as s: for d in s` yields deltas; s.response is the aggregate."""
    server.enqueue(Reply(content="abcdef", chunk_chars=2))
    deltas, s = api.stream("x")
    assert deltas == ["ab", "cd", "ef"]
    assert s.response.content == "abcdef"
    assert s.response.finish_reason == "stop"


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "think", "think_no_open"])
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_reasoning_dialects(api: API, server: FakeServer, style: str, streamed: bool) -> None:
    """Reasoning in every dialect lands in .reasoning and never in .content."""
    server.enqueue(
        Reply(
            content="The answer.", reasoning="Let me think.", reasoning_style=style, chunk_chars=3
        )
    )
    resp = api.chat_stream("q") if streamed else api.chat("q")
    assert resp.content == "The answer."
    assert resp.reasoning.strip() == "Let me think."


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("missing_index", [False, True], ids=["index", "no-index"])
def test_tool_calls(api: API, server: FakeServer, streamed: bool, missing_index: bool) -> None:
    """Tool calls come back whole, streamed or not, even without fragment indexes."""
    calls = [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_time", "arguments": '{"tz": "CET"}'},
    ]
    server.enqueue(Reply(content="", tool_calls=calls, tool_index_missing=missing_index))
    resp = api.chat_stream("q") if streamed else api.chat("q")
    assert [(c.id, c.name, c.arguments) for c in resp.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", '{"tz": "CET"}'),
    ]
    assert resp.finish_reason == "tool_calls"


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried(api: API, server: FakeServer, status: int) -> None:
    """429/502/503/504 are retried and the call then succeeds."""
    server.enqueue(Reply.error(status, "busy", retry_after=0), Reply(content="ok"))
    assert api.chat("x").content == "ok"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(api: API, server: FakeServer, status: int) -> None:
    """400/401/404/422 raise a typed error after exactly one request."""
    server.enqueue(Reply.error(status, "nope"), Reply(content="never"))
    with pytest.raises(lmlink.APIStatusError) as info:
        api.chat("x")
    assert info.value.status_code == status
    assert len(server.requests) == 1


def test_retries_give_up_after_max_retries(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """After max_retries the last error is raised, with its status and Retry-After."""
    api = make_api(max_retries=2)
    for _ in range(5):
        server.enqueue(Reply.error(503, "busy", retry_after=1))
    with pytest.raises(lmlink.OverloadedError) as info:
        api.chat("x")
    assert info.value.retry_after == 1.0
    assert "503" in str(info.value)
    assert len(server.requests) == 3


def test_stream_retried_before_first_delta(api: API, server: FakeServer) -> None:
    """A stream that fails before any delta is retried like a plain call."""
    server.enqueue(
        Reply.error(503, "busy"), Reply(content="fine", cut_after=0), Reply(content="ok")
    )
    assert api.chat_stream("x").content == "ok"
    assert len(server.requests) == 3


def test_in_band_error_mid_stream(api: API, server: FakeServer) -> None:
    """An error event after some text raises StreamError with the partial; no retry."""
    server.enqueue(Reply(content="abcdefgh", chunk_chars=2, error_at=3))  # role chunk + 2
    with pytest.raises(lmlink.StreamError) as info:
        api.chat_stream("x")
    assert isinstance(info.value, lmlink.APIStatusError)
    assert info.value.partial is not None
    assert info.value.partial.content == "abcd"
    assert len(server.requests) == 1


def test_connection_cut_mid_stream(api: API, server: FakeServer) -> None:
    """A server dying mid-stream gives a StreamError that is also an APIConnectionError."""
    server.enqueue(Reply(content="abcdefgh", chunk_chars=2, cut_after=3))  # role chunk + 2
    with pytest.raises(lmlink.StreamError) as info:
        api.chat_stream("x")
    assert isinstance(info.value, lmlink.APIConnectionError)
    assert info.value.partial is not None
    assert info.value.partial.content == "abcd"
    assert len(server.requests) == 1


def test_stall_mid_stream_hits_idle_timeout(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A stream that goes silent raises an idle APITimeoutError carrying the partial."""
    api = make_api(timeout=lmlink.Timeout(connect=2, idle=0.3))
    server.enqueue(Reply(content="abcdefgh", chunk_chars=2, stall_after=2))  # role chunk + 1
    with pytest.raises(lmlink.APITimeoutError) as info:
        api.chat_stream("x")
    assert info.value.phase == "idle"
    assert isinstance(info.value, lmlink.StreamError)
    assert info.value.partial is not None
    assert info.value.partial.content == "ab"


def test_stall_before_headers_is_not_retried(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A server that never answers raises an idle timeout once, not after N retries."""
    api = make_api(timeout=lmlink.Timeout(connect=2, idle=0.3))
    server.enqueue(Reply(content="late", stall_before_headers=5))
    with pytest.raises(lmlink.APITimeoutError) as info:
        api.chat("x")
    assert info.value.phase == "idle"
    assert len(server.requests) == 1


def test_total_deadline_bounds_all_retries(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """With total=1 s and 100 retries allowed, a stalling server is given up on at the deadline."""
    lmlink.set_instant_retries(False)
    api = make_api(
        timeout=lmlink.Timeout(connect=1, idle=0.4, total=1.0),
        retry=lmlink.RetryPolicy(max_retries=100, backoff_initial=0.05),
    )
    server.responder = lambda request: Reply.error(503, "busy", retry_after=0.3)
    with pytest.raises(lmlink.OverloadedError):
        api.chat("x")
    assert 2 <= len(server.requests) <= 5


def test_truncated_stream_is_an_error(api: API, server: FakeServer) -> None:
    """A stream with no finish_reason and no [DONE] raises StreamError with the text."""
    server.enqueue(Reply(content="half", send_finish=False, send_done=False))
    with pytest.raises(lmlink.StreamError) as info:
        api.chat_stream("x")
    assert info.value.partial is not None
    assert info.value.partial.content == "half"


def test_finish_without_done_is_success(api: API, server: FakeServer) -> None:
    """EOF after a finish_reason but without [DONE] is a finished stream."""
    server.enqueue(Reply(content="whole", send_done=False))
    assert api.chat_stream("x").content == "whole"


def test_malformed_chunks_are_skipped(
    api: API, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Non-JSON chunks are skipped with a warning; the rest of the text arrives."""
    server.enqueue(Reply(content="abcdef", chunk_chars=2, malformed_at=[1, 2]))
    with caplog.at_level(logging.WARNING, logger="lmlink"):
        resp = api.chat_stream("x")
    assert resp.content == "abcdef"
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    # records are the "lmlink" logger's and name the line that logged, not a wrapper
    assert {(r.name, r.levelname) for r in skipped} == {("lmlink", "WARNING")}
    assert all(r.module not in ("_log", "__init__") for r in skipped)


def test_leaving_stream_early_closes_connection(api: API, server: FakeServer) -> None:
    """Breaking out of a stream closes the connection, so the server stops generating."""
    server.enqueue(Reply(content="x" * 400, chunk_chars=1, delay=0.005))
    deltas, s = api.stream("x", take=3)
    assert deltas == ["x", "x", "x"]
    assert s.response.finish_reason is None
    server.wait_for(lambda: server.stats.client_disconnects >= 1, timeout=5)
    assert api.chat("again").content


@pytest.mark.parametrize(
    "dialect", ["openai", "vllm", "llamacpp", "ollama", "sglang", "tgi", "mlx"]
)
def test_server_dialects_stream(api: API, server: FakeServer, dialect: str) -> None:
    """Each server's chunk layout streams to the same content and finish reason."""
    server.enqueue(
        Reply(content="same text everywhere", dialect=dialect, chunk_chars=5, comments=True)
    )
    resp = api.chat_stream("x")
    assert resp.content == "same text everywhere"
    assert resp.finish_reason == "stop"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_line_endings(api: API, server: FakeServer, ending: str) -> None:
    """LF, CRLF and CR framed streams all decode."""
    server.enqueue(Reply(content="line endings", line_ending=ending, chunk_chars=3))
    assert api.chat_stream("x").content == "line endings"


def test_model_loading_is_waited_for(make_api: Callable[..., API], server: FakeServer) -> None:
    """While the server answers 503 Loading model, the call waits and then succeeds."""
    lmlink.set_instant_retries(False)
    api = make_api(retry=lmlink.RetryPolicy(max_retries=0, backoff_initial=0.05, backoff_max=0.1))
    server.set_loading(0.5)
    assert api.chat("x").content
    assert len(server.requests) > 2


def test_models_lists_ids(api: API, server: FakeServer) -> None:
    """models() returns objects with .id."""
    assert [m.id for m in api.models()] == ["fake-model"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        Reply(raw=b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"choices":'),
        Reply(raw=b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"choices": []}'),
        Reply(raw=b"garbage that is not HTTP\r\n\r\n"),
        Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
    ],
    ids=["not-json", "truncated-json", "no-choices", "not-http", "short-body"],
)
def test_broken_responses_raise_lmlink_errors(api: API, server: FakeServer, reply: Reply) -> None:
    """Whatever the server sends, only LMLinkError subclasses come out."""
    lmlink.set_instant_retries(True)
    for _ in range(5):
        server.enqueue(reply)
    with pytest.raises(lmlink.LMLinkError):
        api.chat("x")


def test_ok_body_with_error_object(api: API, server: FakeServer) -> None:
    """An HTTP 200 whose body is an error object raises the typed error (LM Studio)."""
    server.enqueue(Reply(body_override={"error": "Unexpected endpoint or method. (POST /x)"}))
    with pytest.raises(lmlink.NotFoundError):
        api.chat("x")


def test_context_overflow_in_stream_is_context_length_error(api: API, server: FakeServer) -> None:
    """SGLang-style HTTP 200 + in-band context error raises ContextLengthError."""
    body = {
        "error": {
            "object": "error",
            "message": "The input (900 tokens) is longer than the "
            "model's context length (512 tokens).",
            "code": 400,
        }
    }
    server.enqueue(Reply(content="", error_at=0, error_body=body))
    with pytest.raises(lmlink.ContextLengthError):
        api.chat_stream("x")


def test_json_mode_and_schema(api: API, server: FakeServer) -> None:
    """response_format json/schema are sent in OpenAI form; a schema yields .parsed."""
    server.enqueue(Reply(content='{"a": 1}'))
    assert api.chat("x", response_format="json").parsed == {"a": 1}
    assert server.requests[-1].json["response_format"] == {"type": "json_object"}  # type: ignore[index]
    schema = {
        "type": "object",
        "properties": {"label": {"enum": ["a", "b"]}},
        "required": ["label"],
    }
    server.enqueue(Reply(content='```json\n{"label": "b"}\n```'))
    resp = api.chat("x", response_format=schema)
    assert resp.parsed == {"label": "b"}
    sent = server.requests[-1].json["response_format"]  # type: ignore[index]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"] == schema
    server.enqueue(Reply(content='{"label": "c"}'), Reply(content='{"label": "d"}'))
    with pytest.raises(lmlink.StructuredOutputError) as info:
        api.chat("x", response_format=schema)
    assert info.value.raw == '{"label": "d"}'
    assert len(info.value.errors) == 2


def test_pydantic_model_output(api: API, server: FakeServer) -> None:
    """A pydantic class as response_format gives a validated instance in .parsed."""
    pydantic = pytest.importorskip("pydantic")

    class Ticket(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        label: str
        urgent: bool

    server.enqueue(Reply(content='<think>hm</think>{"label": "bug", "urgent": true}'))
    resp = api.chat("x", response_format=Ticket)
    assert resp.parsed == Ticket(label="bug", urgent=True)
    assert resp.reasoning == "hm"


def test_no_model_is_a_config_error(make_api: Callable[..., API]) -> None:
    """A call with no model anywhere raises ConfigurationError before any request."""
    api = make_api(model=None)
    with pytest.raises(lmlink.ConfigurationError, match="model"):
        api.chat("x")


def test_redirect_is_not_followed(api: API, server: FakeServer) -> None:
    """A redirect is reported, not followed, so the key never reaches another host."""
    server.enqueue(Reply(status=307, headers={"Location": "http://example.invalid/v1"}, body=b""))
    with pytest.raises(lmlink.APIStatusError, match="redirect"):
        api.chat("x")


def test_invalid_schema_is_a_config_error(api: API) -> None:
    """A response_format schema that is not a valid JSON schema raises ConfigurationError."""
    with pytest.raises(lmlink.ConfigurationError, match="schema"):
        api.chat("x", response_format={"type": 5})


def test_stream_outside_its_context_manager_is_a_clear_error(api: API) -> None:
    """Iterating a stream without entering it says how to use it, and sends nothing."""
    if isinstance(api.client, lmlink.AsyncClient):
        stream = api.client.stream("x")
        with pytest.raises(lmlink.ConfigurationError, match="async with"):
            stream.__aiter__()
    else:
        with pytest.raises(lmlink.ConfigurationError, match=r"with client\.stream"):
            list(api.client.stream("x"))


def test_partial_response_matches_what_was_delivered(api: API, server: FakeServer) -> None:
    """Leaving a stream early: .response holds exactly the deltas handed out."""
    server.enqueue(Reply(deltas=["a", "b", "c", "d", "e", "f"]))
    deltas, s = api.stream("x", take=2)
    assert deltas == ["a", "b"]
    assert s.response.content == "ab"

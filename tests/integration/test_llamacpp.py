"""lmlink against a real llama.cpp server (llama-cpp-python), through the public API only.

Most tests run twice, with the blocking ``Client`` and the asyncio ``AsyncClient``
(``llama_api`` is parametrised over both). The suite's own server serves a random-weight
model whose free text never ends early (so every generation runs to ``max_tokens``); where
an assertion depends on that, or on how llama-cpp-python answers, it is checked exactly
for the suite's server and loosely for a server of yours (``LMLINK_ENDPOINT``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic
import pytest
from llama_engine import N_CTX, Engine

import lmlink
from apis import API, AsyncAPI

pytestmark = pytest.mark.integration

PROMPT = "Say something about the model and the server."
LONG = 10_000  # more tokens than any stream here can produce: n_ctx bounds them


def server_info(api: API) -> lmlink.ServerInfo:
    if isinstance(api, AsyncAPI):
        return api.run(api.client.server_info())  # type: ignore[no-any-return]
    return api.client.server_info()


def test_chat_returns_text_and_usage(llama_api: API, engine: Engine) -> None:
    """A plain chat returns text, integer usage, a finish reason and timings."""
    resp = llama_api.chat(PROMPT, max_tokens=16)
    assert isinstance(resp.content, str)
    assert resp.content.strip()
    assert isinstance(resp.prompt_tokens, int)
    assert resp.prompt_tokens > 0
    assert isinstance(resp.output_tokens, int)
    assert 0 < resp.output_tokens <= 16
    assert resp.finish_reason in ("stop", "length")
    assert resp.model
    assert resp.ttft_s is not None
    assert resp.latency_s is not None
    if engine.owned:
        assert resp.model == engine.model  # llama-cpp-python echoes the requested alias
        assert resp.output_tokens == 16  # the tiny model never ends a turn by itself


def test_message_forms_are_templated(llama_api: API) -> None:
    """A str, dicts and lmlink.Message objects (system + user) all go through the template."""
    as_str = llama_api.chat("hello world", max_tokens=2)
    as_dict = llama_api.chat([{"role": "user", "content": "hello world"}], max_tokens=2)
    as_messages = llama_api.chat(
        [lmlink.Message("system", "Be brief."), lmlink.Message("user", "hello world")],
        max_tokens=2,
    )
    assert as_str.prompt_tokens == as_dict.prompt_tokens
    assert as_str.prompt_tokens is not None
    assert as_messages.prompt_tokens is not None
    assert as_messages.prompt_tokens > as_str.prompt_tokens


def test_non_ascii_text_goes_through_byte_fallback(llama_api: API, engine: Engine) -> None:
    """Text outside the vocabulary is tokenized byte by byte (an emoji is 4 byte tokens)."""
    plain = llama_api.chat("hello", max_tokens=2)
    emoji = llama_api.chat("hello 🙂", max_tokens=2)
    assert emoji.content
    assert plain.prompt_tokens is not None
    assert emoji.prompt_tokens is not None
    assert emoji.prompt_tokens > plain.prompt_tokens
    if engine.owned:  # "▁" and the 4 UTF-8 bytes of the emoji
        assert emoji.prompt_tokens - plain.prompt_tokens == 5


def test_prompt_tokens_count_the_prompt(llama_api: API, engine: Engine) -> None:
    """prompt_tokens is the server's real count: ten more words, ten more tokens."""
    short = llama_api.chat("hello " * 10, max_tokens=1)
    long = llama_api.chat("hello " * 20, max_tokens=1)
    assert short.prompt_tokens is not None
    assert long.prompt_tokens is not None
    assert long.prompt_tokens > short.prompt_tokens
    if engine.owned:  # "▁hello" is one token of the tiny model's vocabulary
        assert long.prompt_tokens - short.prompt_tokens == 10


def test_max_tokens_is_honoured(llama_api: API, engine: Engine) -> None:
    """max_tokens caps the output; hitting it gives finish_reason 'length'."""
    resp = llama_api.chat(PROMPT, max_tokens=5)
    assert resp.output_tokens is not None
    assert resp.output_tokens <= 5
    if engine.owned:
        assert resp.output_tokens == 5
    if resp.output_tokens == 5:
        assert resp.finish_reason == "length"


def test_max_tokens_past_the_context_is_clamped(llama_api: API, engine: Engine) -> None:
    """llama-cpp-python clamps max_tokens to the room left in n_ctx instead of refusing."""
    if not engine.owned:
        pytest.skip("server-specific: other servers refuse or clamp differently")
    resp = llama_api.chat(PROMPT, max_tokens=LONG)
    assert resp.prompt_tokens is not None
    assert resp.output_tokens == N_CTX - resp.prompt_tokens
    assert resp.finish_reason == "length"


def test_stream_deltas_concatenate_to_content(llama_api: API, engine: Engine) -> None:
    """on_delta gets the text piece by piece; the pieces add up to the aggregate content."""
    seen: list[str] = []
    resp = llama_api.chat_stream(PROMPT, on_delta=seen.append, max_tokens=24)
    assert len(seen) > 1
    assert all(isinstance(d, str) and d for d in seen)
    assert "".join(seen) == resp.content
    assert resp.finish_reason in ("stop", "length")
    assert resp.ttft_s is not None
    if engine.owned:
        assert len(seen) == 24  # one chunk per token, all printable
        assert resp.finish_reason == "length"


def test_stream_iterator(llama_api: API) -> None:
    """Iterating a stream yields str deltas; .response afterwards is their aggregate."""
    deltas, stream = llama_api.stream(PROMPT, max_tokens=12)
    assert len(deltas) > 1
    assert "".join(deltas) == stream.response.content
    assert stream.response.finish_reason in ("stop", "length")


def test_streamed_and_plain_chat_agree(llama_api: API, engine: Engine) -> None:
    """With greedy sampling a streamed chat gives the same text as a plain one."""
    plain = llama_api.chat(PROMPT, max_tokens=10, temperature=0.0)
    streamed = llama_api.chat_stream(PROMPT, max_tokens=10, temperature=0.0)
    if engine.owned:
        assert streamed.content == plain.content
    assert streamed.content


def test_streamed_usage_is_what_the_server_reports(llama_api: API, engine: Engine) -> None:
    """Streamed usage is what the server sent: None from llama-cpp-python, never made up."""
    # llama-cpp-python ignores stream_options.include_usage and sends no usage chunk.
    resp = llama_api.chat_stream(PROMPT, max_tokens=8)
    if engine.owned:
        assert resp.prompt_tokens is None
        assert resp.output_tokens is None
    else:
        assert resp.output_tokens is None or 0 < resp.output_tokens <= 8


def test_json_mode_gives_parseable_json(llama_api: API) -> None:
    """response_format='json' is grammar-constrained on this server: the content parses."""
    resp = llama_api.chat("Give me a JSON object.", response_format="json", max_tokens=64)
    assert isinstance(json.loads(resp.content), dict)


def test_json_schema_gives_a_valid_parsed_object(llama_api: API) -> None:
    """A JSON schema (with an enum) ends in a valid .parsed dict."""
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bug", "billing", "other"]}},
        "required": ["label"],
    }
    resp = llama_api.chat(
        "Classify: my card was charged twice.", response_format=schema, max_tokens=48
    )
    assert isinstance(resp.parsed, dict)
    assert resp.parsed["label"] in ("bug", "billing", "other")
    assert json.loads(resp.content) == resp.parsed


class Verdict(pydantic.BaseModel):
    ok: bool


def test_pydantic_model_gives_an_instance(llama_api: API) -> None:
    """A pydantic class as response_format gives an instance of it in .parsed."""
    resp = llama_api.chat("Is it ok?", response_format=Verdict, max_tokens=48)
    assert isinstance(resp.parsed, Verdict)


def test_models_lists_the_alias(llama_api: API, engine: Engine) -> None:
    """models() lists the served model under its alias."""
    ids = [m.id for m in llama_api.models()]
    assert engine.model in ids
    if engine.owned:
        assert ids == ["tiny"]


def test_server_is_recognised(llama_api: API, engine: Engine) -> None:
    """server_info() recognises llama-cpp-python from what it really answers."""
    info = server_info(llama_api)
    assert engine.model in info.models
    if engine.owned:
        assert info.kind == "llama-cpp-python"


def test_sixteen_concurrent_async_chats(engine: Engine) -> None:
    """16 concurrent chats through one AsyncClient all succeed (the server queues them)."""

    async def main() -> list[lmlink.ChatResponse]:
        async with lmlink.AsyncClient(endpoint=engine.url, model=engine.model, timeout=120) as c:
            calls = [c.chat(f"{PROMPT} ({i})", max_tokens=6) for i in range(16)]
            return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert len(results) == 16
    for resp in results:
        assert resp.content.strip()
        assert resp.output_tokens is not None
        assert 0 < resp.output_tokens <= 6


def test_sixteen_threads_share_one_client(engine: Engine) -> None:
    """16 threads sharing one blocking Client all get their answers."""
    with lmlink.Client(endpoint=engine.url, model=engine.model, timeout=120) as client:

        def one(i: int) -> lmlink.ChatResponse:
            return client.chat(f"{PROMPT} ({i})", max_tokens=6)

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(16)))
    assert all(r.content.strip() and r.output_tokens for r in results)


def test_leaving_a_stream_early_frees_the_server(llama_api: API, engine: Engine) -> None:
    """Leaving a stream early closes it: the server stops generating and serves the next."""
    before = engine.log_text().count("Disconnected from client")
    deltas, stream = llama_api.stream(PROMPT, max_tokens=LONG, take=2)
    assert len(deltas) == 2
    # What arrived in the same read as the deltas taken may be in the partial aggregate too.
    assert stream.response.content.startswith("".join(deltas))
    assert stream.response.finish_reason is None  # cut off by us, not finished
    # The server runs one request at a time, so this one is served only once the
    # abandoned stream has stopped (or ran to its end, which the log check rules out).
    resp = llama_api.chat(PROMPT, max_tokens=4)
    assert resp.content
    if engine.owned:  # llama-cpp-python prints this when it notices the client left
        assert engine.log_text().count("Disconnected from client") == before + 1


BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "unknown-role": {"messages": [{"role": "nonsense", "content": "hi"}]},
    "temperature-hot": {"messages": "hi", "temperature": "hot"},
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_a_typed_error(llama_api: API, engine: Engine, case: str) -> None:
    """A request the server rejects raises an APIStatusError subclass with its message."""
    kwargs = dict(BAD_REQUESTS[case])
    messages = kwargs.pop("messages")
    with pytest.raises(lmlink.APIStatusError) as info:
        llama_api.chat(messages, max_tokens=4, **kwargs)
    err = info.value
    assert 400 <= err.status_code < 600
    assert err.body
    if engine.owned:
        # llama-cpp-python reports request validation errors as a 500 (not 400/422), with
        # pydantic's message in an OpenAI-style error body.
        assert err.status_code == 500
        assert isinstance(err, lmlink.InternalServerError)
        assert "validation error" in str(err)
    # The client is still usable afterwards.
    assert llama_api.chat(PROMPT, max_tokens=2).content


def overlong_prompt() -> str:
    return "hello world " * (N_CTX * 4)  # 2 tokens a repeat on the tiny model; > n_ctx anywhere


def test_context_overflow_is_context_length_error(llama_api: API, engine: Engine) -> None:
    """A prompt longer than n_ctx raises ContextLengthError (HTTP 400)."""
    if not engine.owned:
        pytest.skip("needs a server with a small context (the suite's has n_ctx=256)")
    with pytest.raises(lmlink.ContextLengthError) as info:
        llama_api.chat(overlong_prompt(), max_tokens=4)
    assert info.value.status_code == 400
    assert isinstance(info.value, lmlink.BadRequestError)
    assert "context" in str(info.value)


def test_streamed_context_overflow_is_a_typed_error(llama_api: API, engine: Engine) -> None:
    """Streamed, the same overflow raises a typed error, never an empty success."""
    # llama-cpp-python answers 200 text/event-stream, then ends the body with no event.
    if not engine.owned:
        pytest.skip("needs a server with a small context (the suite's has n_ctx=256)")
    with pytest.raises((lmlink.ContextLengthError, lmlink.StreamError)) as info:
        llama_api.chat_stream(overlong_prompt(), max_tokens=4)
    err = info.value
    if isinstance(err, lmlink.StreamError):
        assert err.partial is not None
        assert err.partial.content == ""


def test_killed_server_mid_stream_then_restart(
    owned_engine: Engine, make_llama_api: Callable[..., API]
) -> None:
    """A server killed mid-stream gives StreamError(.partial); the same client recovers."""
    # While the server is down calls raise APIConnectionError; once it is back on the same
    # port, the same client object (and its connection pool) works again.
    api = make_llama_api(retry=lmlink.RetryPolicy(max_retries=2, backoff_initial=0.1))
    assert api.chat(PROMPT, max_tokens=2).content  # a pooled keep-alive connection

    seen: list[str] = []

    def on_delta(delta: str) -> None:
        seen.append(delta)
        owned_engine.kill()  # at the first token: about 230 more were still to come

    with pytest.raises((lmlink.StreamError, lmlink.APIConnectionError)) as info:
        api.chat_stream(PROMPT, on_delta=on_delta, max_tokens=LONG)
    assert seen, "the stream ended before its first token"
    err = info.value
    # Text had reached us, so it is a StreamError (lmlink's also makes it an
    # APIConnectionError) carrying exactly that text, and it was not retried.
    assert isinstance(err, lmlink.StreamError), repr(err)
    assert err.partial is not None
    assert err.partial.content == "".join(seen)
    assert err.partial.finish_reason is None

    with pytest.raises(lmlink.APIConnectionError):
        api.chat(PROMPT, max_tokens=2)  # nothing listens on the port now

    owned_engine.start()
    resp = api.chat(PROMPT, max_tokens=4)
    assert resp.content
    assert resp.output_tokens == 4
    streamed = api.chat_stream(PROMPT, max_tokens=4)
    assert streamed.content

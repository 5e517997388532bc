"""lmlink against a real llama.cpp server (llama-cpp-python), through the public API only."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest
from llama_engine import N_CTX, Engine

import lmlink
from apis import API

PROMPT = "Say something about the model and the server."


def test_chat_returns_text_and_usage(eapi: API) -> None:
    """A plain chat returns text, integer usage and a finish reason."""
    resp = eapi.chat(PROMPT, max_tokens=16, temperature=0.0)
    assert isinstance(resp.content, str)
    assert resp.content
    assert isinstance(resp.prompt_tokens, int)
    assert resp.prompt_tokens > 0
    assert resp.output_tokens is not None
    assert 0 < resp.output_tokens <= 16
    assert resp.finish_reason in ("stop", "length")
    assert resp.ttft_s is not None
    assert resp.latency_s is not None


def test_max_tokens_is_honoured(eapi: API) -> None:
    """max_tokens caps the output; hitting it gives finish_reason 'length'."""
    resp = eapi.chat(PROMPT, max_tokens=5, temperature=0.0)
    assert resp.output_tokens is not None
    assert resp.output_tokens <= 5
    if resp.output_tokens == 5:
        assert resp.finish_reason == "length"


def test_stream_deltas_concatenate_to_content(eapi: API) -> None:
    """on_delta calls add up to the aggregate content."""
    seen: list[str] = []
    resp = eapi.chat_stream(PROMPT, on_delta=seen.append, max_tokens=24, temperature=0.0)
    assert "".join(seen) == resp.content
    assert len(seen) > 1
    assert resp.finish_reason in ("stop", "length")


def test_stream_iterator(eapi: API) -> None:
    """The stream iterator yields deltas; .response is the aggregate afterwards."""
    deltas, stream = eapi.stream(PROMPT, max_tokens=12, temperature=0.0)
    assert "".join(deltas) == stream.response.content
    assert stream.response.finish_reason in ("stop", "length")


def test_streamed_usage_is_what_the_server_reports(eapi: API, engine: Engine) -> None:
    """llama-cpp-python ignores stream_options, so streamed usage is None (as it really is)."""
    resp = eapi.chat_stream(PROMPT, max_tokens=8)
    if engine.owned:
        assert resp.prompt_tokens is None
        assert resp.output_tokens is None
    else:
        assert resp.output_tokens is None or resp.output_tokens > 0


def test_json_mode_gives_parseable_json(eapi: API) -> None:
    """response_format='json' is grammar-constrained: the content parses as JSON."""
    resp = eapi.chat("Give me a JSON object.", response_format="json", max_tokens=48)
    json.loads(resp.content)


def test_schema_with_enum_through_the_fallback(eapi: API) -> None:
    """A JSON schema with an enum ends in a valid .parsed, whatever form the server takes."""
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bug", "billing", "other"]}},
        "required": ["label"],
    }
    resp = eapi.chat(
        "Classify: my card was charged twice.",
        response_format=schema,
        max_tokens=48,
        temperature=0.0,
    )
    assert resp.parsed["label"] in ("bug", "billing", "other")


def test_models_lists_the_alias(eapi: API, engine: Engine) -> None:
    """models() lists the served model."""
    assert engine.model in [m.id for m in eapi.models()]


def test_sixteen_concurrent_async_chats(engine: Engine) -> None:
    """16 concurrent chats through one AsyncClient all succeed."""

    async def main() -> list[lmlink.ChatResponse]:
        async with lmlink.AsyncClient(endpoint=engine.url, model=engine.model, timeout=120) as c:
            return await asyncio.gather(*(c.chat(f"{PROMPT} {i}", max_tokens=6) for i in range(16)))

    results = asyncio.run(main())
    assert len(results) == 16
    assert all(r.content and r.output_tokens for r in results)


def test_leaving_a_stream_early_frees_the_server(eapi: API) -> None:
    """Breaking out of a long stream closes it; the next request is served."""
    deltas, stream = eapi.stream(PROMPT, max_tokens=200, take=2)
    assert len(deltas) == 2
    assert stream.response.finish_reason is None
    resp = eapi.chat(PROMPT, max_tokens=4)
    assert resp.content


def test_bad_request_is_a_typed_error(eapi: API) -> None:
    """A request the server rejects raises an APIStatusError subclass, not a crash."""
    with pytest.raises(lmlink.APIStatusError) as info:
        eapi.chat([{"role": "user", "content": "hi"}], max_tokens="many")
    assert 400 <= info.value.status_code < 600


def test_context_overflow_is_context_length_error(eapi: API, engine: Engine) -> None:
    """A prompt longer than n_ctx raises ContextLengthError."""
    words = " ".join(["hello world"] * (N_CTX * 4 if engine.owned else 200_000))
    with pytest.raises(lmlink.ContextLengthError):
        eapi.chat(words, max_tokens=4)


def test_killed_server_mid_stream_then_restart(
    engine: Engine, make_engine_api: Callable[..., API]
) -> None:
    """A server killed mid-stream gives a typed error with the partial text; the same client
    works again once the server is back."""
    if not engine.owned:
        pytest.skip("needs a server this suite started")
    api = make_engine_api(retry=lmlink.RetryPolicy(max_retries=2, backoff_initial=0.2))
    seen: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.005)
        engine.kill()

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with pytest.raises((lmlink.StreamError, lmlink.APIConnectionError)) as info:
            api.chat_stream(PROMPT, on_delta=seen.append, max_tokens=2000)
    finally:
        thread.join()
    err = info.value
    if isinstance(err, lmlink.StreamError):
        assert err.partial is not None
        assert err.partial.content.startswith(seen[0])
    engine.start()
    assert api.chat(PROMPT, max_tokens=4).content

"""Several choices (``n``), token log-probabilities and ``.raw``: through real HTTP against the
fake server, sync and async, streamed and plain; then the decoder's routing of hostile and
out-of-order choices, as a pure object."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from tests.apis import API

import lmlink
from lmlink._answer import AnswerDecoder, decode_answer
from lmlink._sse import SSEEvent
from lmlink.testing import DIALECTS, FakeServer, Reply
from lmlink.testing._choices import alternative_logprob, token_logprob

HOW = ["chat", "chat_stream"]


def _call(api: API, how: str, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
    return api.chat(*args, **kwargs) if how == "chat" else api.chat_stream(*args, **kwargs)


def _check_logprobs(choice: lmlink.Choice, index: int, top: int) -> None:
    assert choice.logprobs is not None
    assert "".join(t.token for t in choice.logprobs) == choice.content
    for k, t in enumerate(choice.logprobs):
        assert isinstance(t, lmlink.TokenLogprob)
        assert t.logprob == token_logprob(k, index)
        assert t.bytes == list(t.token.encode())
        assert len(t.top) == top
        if top:
            assert t.top[0].token == t.token
            assert t.top[0].logprob == t.logprob
        for j, alt in enumerate(t.top[1:], 1):
            assert alt.token == f"alt{j}"
            assert alt.logprob == alternative_logprob(t.logprob, j)
        # As a model's: in order, and the listed probabilities add up to less than 1.
        probabilities = [math.exp(alt.logprob) for alt in t.top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) < 1


@pytest.mark.parametrize("how", HOW)
def test_n_and_logprobs(api: API, server: FakeServer, how: str) -> None:
    server.enqueue(Reply(content="The sky is blue today."))
    r = _call(api, how, "hi", logprobs=True, top_logprobs=2, n=2)
    body = server.requests[-1].json
    assert body is not None
    assert (body["n"], body["logprobs"], body["top_logprobs"]) == (2, True, 2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.content == "The sky is blue today." for c in r.choices)
    assert all(c.finish_reason == "stop" for c in r.choices)
    assert r.content == r.choices[0].content
    assert r.logprobs == r.choices[0].logprobs
    for choice in r.choices:
        _check_logprobs(choice, choice.index, 2)
    # The choices differ in their logprobs, so one routed to the other's state would show.
    assert r.choices[0].logprobs != r.choices[1].logprobs


@pytest.mark.parametrize("how", HOW)
def test_logprobs_without_top(api: API, how: str) -> None:
    r = _call(api, how, "hi", logprobs=True)
    assert len(r.choices) == 1
    _check_logprobs(r.choices[0], 0, 0)


@pytest.mark.parametrize("how", HOW)
def test_unused_the_answer_is_as_before(api: API, server: FakeServer, how: str) -> None:
    r = _call(api, how, "hi")
    body = server.requests[-1].json
    assert body is not None
    assert "n" not in body
    assert "logprobs" not in body
    assert r.logprobs is None
    [only] = r.choices
    assert (only.index, only.content, only.finish_reason) == (0, r.content, "stop")
    assert only.logprobs is None
    assert only.tool_calls == []


def test_stream_and_plain_agree(api: API) -> None:
    plain = api.chat("hi", logprobs=True, top_logprobs=3, n=3)
    streamed = api.chat_stream("hi", logprobs=True, top_logprobs=3, n=3)
    assert plain.choices == streamed.choices
    assert len(plain.choices) == 3


def test_a_stream_hands_out_choice_0_only(api: API, server: FakeServer) -> None:
    server.enqueue(Reply(content="one two three four five six seven"))
    deltas, s = api.stream("hi", n=3)
    assert "".join(deltas) == "one two three four five six seven"
    assert len(s.response.choices) == 3


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_carries_choices(api: API, server: FakeServer, dialect: str) -> None:
    for how in HOW:
        server.enqueue(Reply(content="alpha beta gamma", dialect=dialect))  # type: ignore[arg-type]
        r = _call(api, how, "hi", n=2, logprobs=True, top_logprobs=1)
        assert [c.content for c in r.choices] == ["alpha beta gamma"] * 2, (dialect, how)
        _check_logprobs(r.choices[1], 1, 1)


@pytest.mark.parametrize("how", HOW)
def test_each_choice_keeps_its_tool_calls(api: API, server: FakeServer, how: str) -> None:
    server.enqueue(Reply(tool_calls=[{"name": "get", "arguments": {"city": "Paris"}}]))
    r = _call(api, how, "hi", n=2)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.tool_calls
        assert (call.name, call.arguments) == ("get", '{"city":"Paris"}')


@pytest.mark.parametrize("how", HOW)
def test_raw(api: API, how: str) -> None:
    r = _call(api, how, "hi")
    assert isinstance(r.raw, dict)
    if how == "chat":
        # The whole body, server fields included.
        assert r.raw["object"] == "chat.completion"
        assert r.raw["choices"][0]["message"]["content"] == r.content
    else:
        # A stream keeps its last JSON chunk: here the usage chunk.
        assert r.raw["object"] == "chat.completion.chunk"
        assert r.raw["usage"]["completion_tokens"] == r.output_tokens


def test_a_response_with_choices_pickles(api: API) -> None:
    r = api.chat("hi", n=2, logprobs=True, top_logprobs=2)
    back = pickle.loads(pickle.dumps(r))
    assert back == r
    assert back.choices == r.choices
    assert back.raw == r.raw


def test_the_fake_server_shape() -> None:
    """What users of lmlink.testing see on the wire: OpenAI's logprobs layout."""
    import httpx

    with FakeServer() as srv:
        got = httpx.post(
            srv.url + "/chat/completions",
            json={"model": "m", "messages": [], "n": 2, "logprobs": True, "top_logprobs": 1},
        ).json()
    assert [c["index"] for c in got["choices"]] == [0, 1]
    first = got["choices"][1]["logprobs"]["content"][0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"}
    assert first["top_logprobs"] == [
        {"token": first["token"], "logprob": first["logprob"], "bytes": first["bytes"]}
    ]


# -- the decoder, pure ----------------------------------------------------------------------


def _chunk(index: Any, content: str, finish: str | None = None, **more: Any) -> SSEEvent:
    import json

    choice = {"index": index, "delta": {"content": content}, "finish_reason": finish, **more}
    return SSEEvent(data=json.dumps({"choices": [choice]}).encode())


def test_choices_interleaved_and_out_of_order() -> None:
    dec = AnswerDecoder()
    out = [
        dec.feed(_chunk(1, "B1 ")),
        dec.feed(_chunk(0, "A1 ")),
        dec.feed(_chunk(2, "C1", "stop")),
        dec.feed(_chunk(0, "A2", "stop")),
    ]
    assert not dec.finished  # choice 1 has not finished
    dec.feed(_chunk(1, "B2", "length"))
    assert dec.finished
    assert out == ["", "A1 ", "", "A2"]
    r = dec.response()
    assert [(c.index, c.content, c.finish_reason) for c in r.choices] == [
        (0, "A1 A2", "stop"),
        (1, "B1 B2", "length"),
        (2, "C1", "stop"),
    ]


def test_hostile_indexes_and_logprobs_are_skipped() -> None:
    dec = AnswerDecoder()
    dec.feed(_chunk(10**9, "huge"))
    dec.feed(_chunk(True, "bool is position 0 "))
    bad = {"content": [{"token": "x"}, "nope", {"token": "y", "logprob": "high"}]}
    dec.feed(_chunk(0, "ok", "stop", logprobs=bad))
    dec.feed(_chunk(0, "", logprobs={"content": [{"token": 5, "logprob": -1, "bytes": "zz"}]}))
    r = dec.response()
    assert r.content == "bool is position 0 ok"
    assert len(r.choices) == 1
    assert r.logprobs == [lmlink.TokenLogprob("5", -1.0, None)]


def test_a_plain_body_with_choices_in_any_order() -> None:
    body = (
        b'{"choices":[{"index":1,"message":{"content":"second"},"finish_reason":"stop"},'
        b'{"index":0,"message":{"content":"first"},"finish_reason":"stop"}],"x_server":7}'
    )
    r = decode_answer(body)
    assert r.content == "first"
    assert [c.content for c in r.choices] == ["first", "second"]
    assert r.raw["x_server"] == 7

"""Answer-decoding edges (non-finite numbers), through real HTTP against the fake server, sync
and async, streamed and plain."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

import lmlink
from apis import API
from lmlink.testing import FakeServer, Reply

# A log-probability of minus infinity (a token that constrained decoding rules out) written
# the way Python's json.dumps writes it by default: ``-Infinity``, which is not JSON.
_LOGPROBS = (
    b'"logprobs":{"content":[{"token":"hello","logprob":-Infinity,"bytes":null,"top_logprobs":[]}]}'
)
_PLAIN = (
    b'{"id":"c1","object":"chat.completion","model":"fake-model","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello world"},' + _LOGPROBS + b","
    b'"finish_reason":"stop"}]}'
)
_CHUNKS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"hello "},' + _LOGPROBS + b"}]}\n\n",
    b'data: {"choices":[{"index":0,"delta":{"content":"world"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
]


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_non_finite_logprob_keeps_the_text(
    make_api: Callable[..., API], server: FakeServer, mode: str
) -> None:
    """Python servers that serialise with json.dumps' defaults write -Infinity for a token
    that cannot be chosen; the answer's text and its log-probabilities must survive it,
    the same plain and streamed."""
    api = make_api()
    if mode == "plain":
        server.enqueue(Reply(body_override=_PLAIN))
        resp = api.chat("hi", logprobs=True)
    else:
        server.enqueue(Reply(raw_body_chunks=_CHUNKS))
        resp = api.chat_stream("hi", logprobs=True)
    assert resp.content == "hello world"
    assert resp.logprobs is not None
    (first,) = resp.logprobs
    assert first.token == "hello"
    assert first.logprob is None or math.isinf(first.logprob)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a":-Infinity}', -math.inf),
        (b'{"a":Infinity}', math.inf),
        (b'{"a":"caf\xe9","b":-Infinity}', -math.inf),
    ],
    ids=["minus-infinity", "infinity", "with-invalid-utf8"],
)
def test_loads_lenient_reads_non_finite_numbers(data: bytes, expected: float) -> None:
    """The lenient reader takes json.dumps' non-finite numbers, alone or beside invalid
    UTF-8."""
    from lmlink._answer import loads_lenient

    assert loads_lenient(data)["a" if b"caf" not in data else "b"] == expected


def test_loads_lenient_deep_nesting_is_a_value_error() -> None:
    """A hostile nesting depth next to a non-finite number is still a ValueError (the
    decoder's skip path), never a RecursionError."""
    from lmlink._answer import loads_lenient

    with pytest.raises(ValueError, match="nested too deep"):
        loads_lenient(b"[" * 100_000 + b"NaN" + b"]" * 100_000)

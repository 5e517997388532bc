"""``client.embed`` / ``aclient.embed`` against the fake server over real HTTP, and raw
answers shaped like the real servers' (out of order, base64, no usage, errors)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import pytest

import lmlink
from apis import API
from lmlink.testing import EmbedSettings, FakeServer, Reply, embedding_of


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def embed(api: API, *args: Any, **kwargs: Any) -> lmlink.Embeddings:
    """``embed`` through the client of the parametrised kind."""
    if api.kind == "sync":
        return api.client.embed(*args, **kwargs)  # type: ignore[union-attr,no-any-return]
    return api.run(api.client.embed(*args, **kwargs))  # type: ignore[union-attr,no-any-return]


def answer(data: list[dict[str, Any]], **extra: Any) -> Reply:
    """A verbatim 200 answer of the embeddings route."""
    return Reply(body_override={"object": "list", "data": data, **extra})


def test_vectors_in_input_order_with_usage(api: API, server: FakeServer) -> None:
    """Each input gets its own vector, in order; usage and model come through."""
    e = embed(api, ["a cat", "a small dog", "x"])
    assert e.vectors == [embedding_of("a cat"), embedding_of("a small dog"), embedding_of("x")]
    assert e.prompt_tokens == 2 + 3 + 1
    assert e.model == "fake-model"
    sent = server.requests[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json == {"model": "fake-model", "input": ["a cat", "a small dog", "x"]}


def test_one_string_is_one_input(api: API) -> None:
    """A plain string is embedded as a list of one."""
    e = embed(api, "hello")
    assert e.vectors == [embedding_of("hello")]
    assert len(e) == 1


def test_dimensions_and_model_are_sent(api: API, server: FakeServer) -> None:
    """``dimensions`` and ``model`` go into the body; the server honours the size."""
    e = embed(api, ["a", "b"], model="embedder", dimensions=3)
    assert [len(v) for v in e.vectors] == [3, 3]
    assert e.model == "embedder"
    assert server.requests[-1].json["dimensions"] == 3


def test_out_of_order_answer_is_sorted_by_index(api: API, server: FakeServer) -> None:
    """A server that answers last to first still gives vectors in input order."""
    server.embed = EmbedSettings(order="reversed")
    texts = [f"text {n}" for n in range(5)]
    e = embed(api, texts)
    assert e.vectors == [embedding_of(t) for t in texts]


def test_base64_is_decoded_to_the_same_floats(api: API, server: FakeServer) -> None:
    """``encoding_format="base64"``: the float32 bytes decode to the float answer."""
    floats = embed(api, ["one", "two"])
    packed = embed(api, ["one", "two"], encoding_format="base64")
    assert server.requests[-1].json["encoding_format"] == "base64"
    assert packed.vectors == floats.vectors


def test_floats_where_base64_was_asked(api: API, server: FakeServer) -> None:
    """A server that ignores ``encoding_format`` (older Ollama) still decodes."""
    server.embed = EmbedSettings(base64=False)
    e = embed(api, ["one"], encoding_format="base64")
    assert e.vectors == [embedding_of("one")]


def test_missing_usage_is_none(api: API, server: FakeServer) -> None:
    """No ``usage`` in the answer: ``prompt_tokens`` is None, the vectors are there."""
    server.embed = EmbedSettings(usage=False)
    e = embed(api, ["a"])
    assert e.prompt_tokens is None
    assert e.vectors == [embedding_of("a")]


def test_usage_of_zeros_is_none(api: API, server: FakeServer) -> None:
    """LocalAI's answer carries a usage of zeros: not a count, so ``prompt_tokens`` is None."""
    zeros = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    server.enqueue_embeddings(answer([{"index": 0, "embedding": [0.5]}], usage=zeros))
    e = embed(api, ["a"])
    assert e.prompt_tokens is None
    assert e.vectors == [[0.5]]


def test_hand_made_base64_little_endian(api: API, server: FakeServer) -> None:
    """Base64 of little-endian float32, out of order, as llama-server sends it."""
    one = base64.b64encode(struct.pack("<2f", 0.5, -2.0)).decode()
    two = base64.b64encode(struct.pack("<2f", 1.0, 0.25)).decode()
    server.enqueue_embeddings(
        answer([{"index": 1, "embedding": two}, {"index": 0, "embedding": one}])
    )
    assert embed(api, ["a", "b"]).vectors == [[0.5, -2.0], [1.0, 0.25]]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([{"index": 0, "embedding": [1.0]}], "1 vectors for 2 inputs"),
        ([{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}], "appears twice"),
        ([{"index": 0, "embedding": [1]}, {"index": 5, "embedding": [2]}], "index 5"),
        ([{"index": 0, "embedding": [1]}, {"index": 1, "embedding": ["x"]}], "holds 'x'"),
        ([{"index": 0, "embedding": [1]}, {"index": 1, "embedding": "!!"}], "not base64"),
        ([{"index": 0, "embedding": [1]}, {"index": 1}], "no embedding"),
    ],
    ids=["short", "twice", "out-of-range", "not-numbers", "bad-base64", "missing"],
)
def test_malformed_answers_are_decode_errors(
    api: API, server: FakeServer, data: list[dict[str, Any]], words: str
) -> None:
    """An answer that does not hold one vector per input is a DecodeError saying why."""
    server.enqueue_embeddings(answer(data))
    with pytest.raises(lmlink.DecodeError, match=words):
        embed(api, ["a", "b"])


@pytest.mark.parametrize(
    ("refusal", "error", "status"),
    [("llamacpp", lmlink.InternalServerError, 501), ("vllm", lmlink.BadRequestError, 400)],
)
def test_chat_only_model_is_a_typed_error(
    api: API, server: FakeServer, refusal: Any, error: type[Exception], status: int
) -> None:
    """llama-server without --embeddings (and Ollama for a chat model) answers 501, vLLM
    400: each a typed error with the server's words, not retried."""
    server.embed = EmbedSettings(models={"embedder"}, refusal=refusal)
    with pytest.raises(error, match=r"(?i)does not support embeddings") as info:
        embed(api, ["a"], model="chat-model")
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert len(server.requests) == 1
    assert embed(api, ["a"], model="embedder").vectors == [embedding_of("a")]


def test_bad_input_is_a_bad_request(api: API, server: FakeServer) -> None:
    """An input the server refuses is a BadRequestError, not retried."""
    server.embed = EmbedSettings(fail_on="HUGE")
    with pytest.raises(lmlink.BadRequestError):
        embed(api, ["fine", "HUGE text"])
    assert len(server.requests) == 1


def test_in_band_error_on_200(api: API, server: FakeServer) -> None:
    """An error object on HTTP 200 raises the error it reports."""
    server.enqueue_embeddings(Reply(body_override={"error": {"message": "boom", "code": 500}}))
    with pytest.raises(lmlink.InternalServerError, match="boom"):
        embed(api, ["a"])


def test_503_is_retried_like_chat(api: API, server: FakeServer) -> None:
    """The attempt loop of chat: a 503 then an answer gives the answer."""
    server.enqueue_embeddings(Reply.error(503, retry_after=0))
    assert embed(api, ["a"]).vectors == [embedding_of("a")]
    assert len(server.requests) == 2


def test_per_call_timeout_headers_and_extra_body(make_api: Any, server: FakeServer) -> None:
    """``timeout=``, ``headers=`` and ``extra_body=`` apply to the call as in chat."""
    api = make_api(max_retries=0)
    server.enqueue_embeddings(Reply(delay=2.0))
    with pytest.raises(lmlink.APITimeoutError):
        embed(api, ["a"], timeout=0.2)
    e = embed(api, ["a"], headers={"X-Trace": "t1"}, extra_body={"truncate": True})
    assert e.vectors == [embedding_of("a")]
    last = server.requests[-1]
    assert last.headers["x-trace"] == "t1"
    assert last.json["truncate"] is True


def test_secret_in_headers_is_redacted(make_api: Any, server: FakeServer) -> None:
    """A key given in ``headers=`` is blanked out of the error that echoes it."""
    api = make_api(max_retries=0)
    server.enqueue_embeddings(Reply.error(400, "bad key sk-secret-123"))
    with pytest.raises(lmlink.BadRequestError) as info:
        embed(api, ["a"], headers={"Authorization": "Bearer sk-secret-123"})
    assert "sk-secret-123" not in str(info.value)


@pytest.mark.parametrize(
    ("inputs", "kwargs", "words"),
    [
        ([], {}, "at least one"),
        ([1, 2], {}, "input 0 is int"),
        (b"bytes", {}, "not bytes"),
        (["a"], {"dimensions": 0}, "dimensions"),
        (["a"], {"stream": True}, "stream"),
        (["a"], {"input": ["b"]}, "first argument"),
        (["a"], {"extra_body": {"input": ["b"]}}, "first argument"),
        (["a"], {"extra_body": {"model": "x"}}, "model"),
        (["a"], {"dimensions": 4, "extra_body": {"dimensions": 8}}, "twice"),
    ],
    ids=[
        "empty",
        "not-strings",
        "bytes",
        "dimensions",
        "stream",
        "input-keyword",
        "input-in-extra-body",
        "model-in-extra-body",
        "dimensions-twice",
    ],
)
def test_bad_arguments_are_refused_before_sending(
    api: API, server: FakeServer, inputs: Any, kwargs: dict[str, Any], words: str
) -> None:
    """Arguments that cannot be sent raise ConfigurationError and send nothing."""
    with pytest.raises(lmlink.ConfigurationError, match=words):
        embed(api, inputs, **kwargs)
    assert not server.requests


def test_no_model_is_a_configuration_error(make_api: Any, server: FakeServer) -> None:
    """No model given and none set: ConfigurationError, nothing sent."""
    api = make_api(model=None)
    with pytest.raises(lmlink.ConfigurationError, match="no model"):
        embed(api, ["a"])
    assert not server.requests


def test_embeddings_value() -> None:
    """Embeddings compares by value and says what it holds."""
    a = lmlink.Embeddings([[1.0, 2.0]], prompt_tokens=2, model="m")
    assert a == lmlink.Embeddings([[1.0, 2.0]], prompt_tokens=2, model="m")
    assert a != lmlink.Embeddings([[1.0]], prompt_tokens=2, model="m")
    assert repr(a) == "Embeddings(1 vectors of 2, model='m', prompt_tokens=2)"


def test_random_faults_apply_to_embeddings(make_api: Any, server: FakeServer) -> None:
    """The fake server's ``faults`` hit the embeddings route too, and are counted."""
    from lmlink.testing import Faults

    api = make_api(max_retries=0)
    server.faults = Faults(seed=1, p_503=1.0)
    with pytest.raises(lmlink.OverloadedError):
        embed(api, ["a"])
    assert server.stats.faults == {"503": 1}
    server.faults = Faults(seed=1, p_stall=1.0)
    with pytest.raises(lmlink.APITimeoutError):
        embed(api, ["a"], timeout=0.3)


def test_the_server_knobs_reset_and_route(server: FakeServer, api: API) -> None:
    """``reset`` drops queued embeddings replies; GET on the route is a 405."""
    server.enqueue_embeddings(Reply.error(400))
    server.reset()
    assert embed(api, ["a"]).vectors == [embedding_of("a")]
    import urllib.request
    from urllib.error import HTTPError

    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(server.url + "/embeddings", timeout=5)
    info.value.close()
    assert info.value.code == 405

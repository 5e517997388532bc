"""count_tokens and context_length through real HTTP, against the fake server in the shape
of each real server (its persona), blocking and asyncio."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lmlink
from apis import API, AsyncAPI
from lmlink._tokens import (
    TokenMemory,
    context_steps,
    count_steps,
    ollama_served,
    ollama_window,
)
from lmlink.testing import FakeServer
from raw_http import RawServer

HELLO = [{"role": "user", "content": "Hello world"}]
# The fake's ChatML prompt of HELLO: <|im_start|> user \n Hello ␣world <|im_end|> \n
# <|im_start|> assistant \n = 10 tokens.
HELLO_CHAT = 10


@pytest.fixture
def persona() -> str | None:
    return "llamacpp"


@pytest.fixture
def server(persona: str | None) -> Iterator[FakeServer]:
    """The fake server, in the shape of the test's persona."""
    with FakeServer(model="fake-model", persona=persona) as srv:
        yield srv


def call(api: API, name: str, *args: Any, **kwargs: Any) -> Any:
    """``api.client.<name>(...)``, awaited on the asyncio client."""
    result = getattr(api.client, name)(*args, **kwargs)
    return api.run(result) if isinstance(api, AsyncAPI) else result


def posts(server: FakeServer) -> list[tuple[str, Any]]:
    return [(r.path, r.json) for r in server.requests if r.method == "POST"]


@pytest.mark.parametrize(
    ("persona", "path", "body"),
    [
        ("llamacpp", "/tokenize", {"content": "Hello world", "add_special": True}),
        (
            "vllm",
            "/tokenize",
            {"model": "fake-model", "prompt": "Hello world", "add_special_tokens": True},
        ),
        (
            "sglang",
            "/tokenize",
            {"model": "fake-model", "prompt": "Hello world", "add_special_tokens": True},
        ),
        (
            "llama-cpp-python",
            "/extras/tokenize/count",
            {"model": "fake-model", "input": "Hello world"},
        ),
        ("tgi", "/tokenize", {"inputs": "Hello world"}),
    ],
)
def test_count_text_per_server(api: API, server: FakeServer, path: str, body: Any) -> None:
    """A string is counted by the server's own tokenize endpoint, in its request shape, with
    the BOS token a prompt gets (2 words + BOS)."""
    assert call(api, "count_tokens", "Hello world") == 3
    assert posts(server) == [(path, body)]


@pytest.mark.parametrize(
    ("persona", "expected", "paths"),
    [
        ("llamacpp", HELLO_CHAT + 1, ["/apply-template", "/tokenize"]),
        ("vllm", HELLO_CHAT, ["/tokenize"]),
        ("tgi", HELLO_CHAT + 1, ["/chat_tokenize"]),
    ],
)
def test_count_messages_with_the_chat_template(
    api: API, server: FakeServer, expected: int, paths: list[str]
) -> None:
    """Messages are counted as the chat prompt the server builds: llama.cpp renders the
    template (/apply-template) and tokenizes it with BOS; vLLM takes the messages itself."""
    assert call(api, "count_tokens", HELLO) == expected
    sent = posts(server)
    assert [p for p, _ in sent] == paths
    assert sent[0][1]["messages"] == HELLO


@pytest.mark.parametrize("persona", ["vllm"])
def test_vllm_chat_body_asks_for_the_generation_prompt(api: API, server: FakeServer) -> None:
    """vLLM is asked for the prompt a chat call would get: generation prompt included, the
    model named."""
    call(api, "count_tokens", HELLO)
    body = posts(server)[-1][1]
    assert body == {"model": "fake-model", "messages": HELLO, "add_generation_prompt": True}


@pytest.mark.parametrize(
    ("persona", "name"), [("sglang", "SGLang"), ("llama-cpp-python", "llama-cpp-python")]
)
def test_text_only_tokenizers_refuse_messages(api: API, server: FakeServer, name: str) -> None:
    """SGLang and llama-cpp-python tokenize plain text only: messages raise UnsupportedError
    naming the server, without a wrong count and without a tokenize request."""
    with pytest.raises(lmlink.UnsupportedError, match=name) as info:
        call(api, "count_tokens", HELLO)
    assert "pass a string" in str(info.value)
    assert posts(server) == []


@pytest.mark.parametrize(
    ("persona", "name"),
    [("ollama", "Ollama"), ("lmstudio", "LM Studio"), ("mlx", "mlx-lm"), ("openai", "OpenAI")],
)
def test_no_tokenizer_is_a_typed_error_naming_the_server(
    api: API, server: FakeServer, persona: str, name: str
) -> None:
    """A server with no tokenizer endpoint raises UnsupportedError (a ConfigurationError)
    naming it, after one GET that identifies it and no POST at all."""
    with pytest.raises(lmlink.UnsupportedError, match=f"the {name} server at ") as info:
        call(api, "count_tokens", "Hello world")
    assert info.value.server == persona
    assert isinstance(info.value, lmlink.ConfigurationError)
    assert posts(server) == []


@pytest.mark.parametrize("persona", [None])
def test_unknown_server_without_tokenizer(api: API, server: FakeServer) -> None:
    """A server of unknown kind is probed in each known shape; when none answers, the error
    says so."""
    with pytest.raises(lmlink.UnsupportedError, match="answered none of the tokenizer"):
        call(api, "count_tokens", "Hello world")
    assert [p for p, _ in posts(server)] == ["/tokenize", "/tokenize", "/extras/tokenize/count"]


@pytest.mark.parametrize("persona", ["llamacpp"])
def test_probe_once_then_remembered(api: API, server: FakeServer) -> None:
    """The kind is learned once (GET /v1/models); later counts go straight to /tokenize."""
    call(api, "count_tokens", "Hello world")
    call(api, "count_tokens", "one two three")
    call(api, "count_tokens", HELLO)
    paths = [(r.method, r.path) for r in server.requests]
    assert paths == [
        ("GET", "/v1/models"),
        ("POST", "/tokenize"),
        ("POST", "/tokenize"),
        ("POST", "/apply-template"),
        ("POST", "/tokenize"),
    ]


@pytest.mark.parametrize("persona", ["vllm"])
def test_unidentified_vllm_is_probed_and_remembered(api: API, server: FakeServer) -> None:
    """Behind something that hides its kind, vLLM is found by probing: llama.cpp's shape is
    refused (400: no prompt), vLLM's answers, and only vLLM's is sent from then on."""
    server.owned_by = "proxy"  # /v1/models no longer tells the kind
    assert call(api, "count_tokens", "Hello world") == 3
    assert call(api, "count_tokens", "Hello world, again") == 5
    bodies = [body for _, body in posts(server)]
    assert "content" in bodies[0]
    assert [b.get("prompt") for b in bodies[1:]] == ["Hello world", "Hello world, again"]


@pytest.mark.parametrize("persona", ["vllm"])
def test_memory_is_per_client(make_api: Callable[..., API], server: FakeServer) -> None:
    """Each client learns for itself: a second client identifies the server again."""
    for _ in range(2):
        call(make_api(), "count_tokens", "x")
    gets = [r.path for r in server.requests if r.method == "GET"]
    assert gets == ["/v1/models", "/v1/models"]


@pytest.mark.parametrize("persona", ["vllm"])
def test_server_errors_are_raised_typed(api: API, server: FakeServer) -> None:
    """A known server's refusal is raised as the matching status error (unknown model: 404)."""
    with pytest.raises(lmlink.NotFoundError, match="does not exist"):
        call(api, "count_tokens", "hi", model="no-such-model")


@pytest.mark.parametrize("persona", ["llamacpp"])
def test_api_key_is_sent(make_api: Callable[..., API], server: FakeServer) -> None:
    """The tokenizer requests carry the client's key like every other request."""
    server.api_key = "sk-test"
    assert call(make_api(api_key="sk-test"), "count_tokens", "Hello world") == 3
    with pytest.raises(lmlink.AuthenticationError):
        call(make_api(), "count_tokens", "Hello world")


# -- context_length -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "path"),
    [
        ("vllm", "/v1/models"),
        ("sglang", "/v1/models"),
        ("llamacpp", "/props"),
        ("ollama", "/api/show"),
        ("lmstudio", "/api/v0/models"),
        ("tgi", "/info"),
    ],
)
def test_context_length_per_server(api: API, server: FakeServer, path: str) -> None:
    """Each server's window is read where that server tells it."""
    server.context_length = 8192
    assert call(api, "context_length") == 8192
    assert server.requests[-1].path == path
    server.context_length = 2048
    assert call(api, "context_length", "fake-model") == 2048


@pytest.mark.parametrize("persona", ["vllm", "llamacpp", "ollama", "lmstudio", "sglang", "tgi"])
def test_context_length_none_when_not_told(api: API, server: FakeServer) -> None:
    """A server that does not report the window gives None, not a guess."""
    server.context_length = None
    assert call(api, "context_length") is None


@pytest.mark.parametrize("persona", ["llama-cpp-python", "mlx", None])
def test_context_length_none_for_servers_that_never_say(api: API, server: FakeServer) -> None:
    """llama-cpp-python, mlx-lm and unknown servers do not tell their window: None."""
    assert call(api, "context_length") is None


@pytest.mark.parametrize("persona", ["ollama"])
def test_ollama_unknown_model_is_none(api: API, server: FakeServer) -> None:
    """Ollama's /api/show 404 for a model it lacks: the window is unknown."""
    assert call(api, "context_length", "other-model") is None
    assert server.requests[-1].json == {"model": "other-model"}


@pytest.mark.parametrize("persona", ["vllm"])
def test_context_length_of_the_named_model(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """The window is that of the model asked for (the client's model by default)."""
    server.models = ["a", "fake-model"]
    api = make_api(model=None)
    assert call(api, "context_length") == 4096  # no model: the first listed
    assert call(api, "context_length", "missing") is None


@pytest.mark.parametrize("persona", ["vllm"])
def test_context_length_raises_when_the_model_list_fails(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A refused model list is an error, not an unknown window."""
    server.api_key = "sk-test"
    with pytest.raises(lmlink.AuthenticationError):
        call(make_api(), "context_length")


def test_ollama_window_prefers_num_ctx() -> None:
    """Ollama runs a model with its num_ctx when the Modelfile sets one; otherwise the window
    is the trained context length of the model's architecture."""
    info = {"general.architecture": "llama", "llama.context_length": 131072}
    assert ollama_window({"model_info": info, "parameters": "num_ctx 8192\nstop x"}) == 8192
    assert ollama_window({"model_info": info, "parameters": 'stop "<|eot_id|>"'}) == 131072
    assert ollama_window({"model_info": {"qwen3.context_length": 40960}}) == 40960
    assert ollama_window({"model_info": {}}) is None
    assert ollama_window("garbage") is None


@pytest.mark.parametrize("persona", ["vllm"])
def test_context_length_teaches_the_kind_to_count_tokens(api: API, server: FakeServer) -> None:
    """The kind learned by context_length is reused: count_tokens asks no model list."""
    server.owned_by = "vllm"
    call(api, "context_length")
    call(api, "count_tokens", "Hello world")
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/tokenize"),
    ]


@pytest.mark.parametrize("persona", [None])
def test_old_llamacpp_without_apply_template(api: API, server: FakeServer) -> None:
    """A llama.cpp build without /apply-template cannot count messages: a typed error that
    says what to do, not a bare 404."""
    server.owned_by = "llamacpp"
    with pytest.raises(lmlink.UnsupportedError, match="no /apply-template"):
        call(api, "count_tokens", HELLO)


@pytest.mark.parametrize("persona", ["vllm"])
def test_the_fake_tokenizer_is_public(api: API, server: FakeServer) -> None:
    """Users can work out the fake server's counts with the same functions it uses."""
    from lmlink.testing import chat_prompt, fake_tokens

    assert call(api, "count_tokens", "a, b c") == len(fake_tokens("a, b c", bos=True)) == 5
    assert call(api, "count_tokens", HELLO) == len(fake_tokens(chat_prompt(HELLO))) == HELLO_CHAT


# -- the drivers, pure: answers in, requests out --------------------------------------


def drive(steps: Any, answers: list[tuple[int, bytes]]) -> tuple[list[Any], Any]:
    """Run a driver on canned answers; return the requests it made and its result (or the
    exception it raised)."""
    asked: list[Any] = []
    reply: Any = None
    try:
        while True:
            asked.append(steps.send(reply))
            status, body = answers.pop(0)
            reply = (status, {}, body)
    except StopIteration as done:
        return asked, done.value
    except lmlink.LMLinkError as exc:
        return asked, exc


@pytest.mark.parametrize("miss", [400, 404, 405, 422, 501])
def test_probe_moves_on_after_a_refusal(miss: int) -> None:
    """While probing a server of no known tokenizer shape (LocalAI, a proxy), a refusal
    means "not this shape"."""
    memory = TokenMemory()
    answers = [(miss, b"{}"), (200, b'{"count": 7}')]
    asked, result = drive(count_steps(memory, "http://h:1/v1", "localai", "m", "x"), answers)
    assert result == 7
    assert [a.url for a in asked] == ["http://h:1/tokenize", "http://h:1/tokenize"]
    assert asked[1].body == {"model": "m", "prompt": "x", "add_special_tokens": True}
    assert memory.routes["http://h:1/v1"].name == "vllm"


def test_probe_stops_at_a_server_error() -> None:
    """A 500 is the server's failure, not a shape it lacks: raised at once."""
    steps = count_steps(TokenMemory(), "http://h:1/v1", "localai", None, "x")
    asked, result = drive(steps, [(500, b'{"error": "boom"}')])
    assert isinstance(result, lmlink.InternalServerError)
    assert len(asked) == 1


def test_known_kind_decodes_strictly() -> None:
    """A known server's answer that holds no count is a DecodeError, not a guess."""
    steps = count_steps(TokenMemory(), "http://h:1/v1", "llamacpp", None, "x")
    _, result = drive(steps, [(200, b'{"nothing": 1}')])
    assert isinstance(result, lmlink.DecodeError)


def test_context_steps_reads_max_model_len_first() -> None:
    """A window in the model list is taken without asking anything else."""
    listing = b'{"data": [{"id": "a", "max_model_len": 32768}]}'
    asked, result = drive(
        context_steps(TokenMemory(), "http://h:1/v1", None, "a"), [(200, listing)]
    )
    assert result == 32768
    assert len(asked) == 1


def test_context_steps_lmstudio_falls_back_to_the_v1_listing() -> None:
    """LM Studio without the v0 API: the v1 listing's loaded instance gives the window."""
    v1 = (
        b'{"models": [{"key": "q", "max_context_length": 131072,'
        b' "loaded_instances": [{"id": "q", "config": {"context_length": 8192}}]}]}'
    )
    answers = [(200, b'{"data": [{"id": "q"}]}'), (404, b"{}"), (200, v1)]
    asked, result = drive(context_steps(TokenMemory(), "http://h:1/v1", "lmstudio", "q"), answers)
    assert result == 8192
    assert [a.url for a in asked][1:] == ["http://h:1/api/v0/models", "http://h:1/api/v1/models"]


def _answer(sock: socket.socket, status: str, body: bytes, extra: str = "") -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)


def test_count_tokens_waits_out_a_busy_server(make_api: Callable[..., API]) -> None:
    """A 503 with Retry-After on the tokenizer endpoint is retried like any call's."""

    def script(n: int, sock: socket.socket) -> None:
        if n == 0:
            _answer(sock, "200 OK", b'{"data": [{"id": "m", "owned_by": "llamacpp"}]}')
        elif n == 1:
            _answer(sock, "503 Service Unavailable", b'{"error": "busy"}', "Retry-After: 0\r\n")
        else:
            _answer(sock, "200 OK", b'{"tokens": [1, 2, 3, 4]}')

    raw = RawServer(script)
    try:
        assert call(make_api(endpoint=raw.url), "count_tokens", "four tokens here") == 4
        assert raw.requests == 3
    finally:
        raw.close()


@pytest.mark.parametrize("persona", ["ollama"])
def test_ollama_loaded_model_gives_the_served_window(api: API, server: FakeServer) -> None:
    """Once Ollama has loaded the model (a chat asked for it), /api/ps says the window it
    serves; /api/show is not asked."""
    api.chat("hi")
    server.context_length = 2048
    assert call(api, "context_length") == 2048
    asked = [r.path for r in server.requests if r.method != "POST" or "chat" not in r.path]
    assert asked[-1] == "/api/ps"
    assert "/api/show" not in asked


def test_ollama_served_matches_names_with_and_without_tag() -> None:
    """A model asked for as ``llama3`` is the loaded ``llama3:latest``."""
    ps = {"models": [{"name": "llama3:latest", "model": "llama3:latest", "context_length": 4096}]}
    assert ollama_served(ps, "llama3") == 4096
    assert ollama_served(ps, "llama3:latest") == 4096
    assert ollama_served(ps, "qwen3:8b") is None
    assert ollama_served({"models": [{"name": "llama3:latest"}]}, "llama3") is None
    assert ollama_served(None, "llama3") is None

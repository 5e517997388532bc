"""Token counts and context windows, pure: which requests ask a server for them, and what
the answers say. The clients run the drivers here (:func:`count_steps`,
:func:`context_steps`) in a loop of a few lines, doing only the I/O.

Where each server keeps them (read from their source):

- llama.cpp ``llama-server``: ``POST /tokenize`` ``{"content", "add_special"}`` answers
  ``{"tokens": [...]}``; messages first go through ``POST /apply-template``
  ``{"messages"}`` → ``{"prompt"}`` (the model's chat template, generation prompt
  included), whose text is then tokenized with the BOS token the server adds to a chat
  prompt. Window: ``GET /props`` → ``default_generation_settings.n_ctx`` (one slot's).
- vLLM: ``POST /tokenize`` (at the root, not under ``/v1``) with ``{"model", "prompt",
  "add_special_tokens"}`` or ``{"model", "messages", "add_generation_prompt"}`` (the
  server applies the chat template) → ``{"count", "max_model_len", "tokens"}``. Window:
  ``max_model_len`` of the model's ``/v1/models`` entry.
- SGLang: ``POST /tokenize`` ``{"model", "prompt", "add_special_tokens"}`` → ``{"tokens",
  "count", "max_model_len"}``; plain text only. Window: ``/v1/models`` ``max_model_len``.
- llama-cpp-python: ``POST /extras/tokenize/count`` ``{"input", "model"}`` → ``{"count"}``;
  plain text only, the BOS token always counted. Window: not told.
- TGI: ``POST /tokenize`` ``{"inputs"}`` → a list of ``{"id", "text", "start", "stop"}``;
  messages through ``POST /chat_tokenize`` ``{"model", "messages"}`` →
  ``{"tokenize_response": [...], "templated_text"}``. Window: ``GET /info`` →
  ``max_total_tokens``.
- Ollama: no tokenizer. Window: ``GET /api/ps`` ``context_length`` while the model is
  loaded (what Ollama serves it with); else ``POST /api/show`` ``{"model"}``: ``num_ctx``
  in ``parameters`` when the model sets one, else ``model_info["<arch>.context_length"]``
  (what it was trained for, at least the served window).
- LM Studio: no tokenizer over HTTP. Window: the model's ``GET /api/v0/models`` entry,
  ``loaded_context_length`` or else ``max_context_length`` (``GET /api/v1/models``, the
  newer listing, when there is no v0).

A string is counted as plain text with the special tokens the tokenizer adds to a prompt
(BOS); a list of messages as the prompt of a chat call, template and all. A server of
unknown kind is probed once, llama.cpp's shape first (vLLM refuses a body without
``prompt``, while llama.cpp answers an empty list to one without ``content``); the route
that answered is remembered per client and endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _json
from ._core import Call
from ._discovery import identify, origin_of
from ._errmap import error_from_response
from ._errors import DecodeError, UnsupportedError
from ._wire import MessagesInput, normalize_messages

if TYPE_CHECKING:
    from ._core import ClientCore

__all__ = [
    "Ask",
    "Reply",
    "Route",
    "TokenMemory",
    "ask_call",
    "context_steps",
    "count_steps",
    "memory_of",
    "ollama_served",
    "ollama_window",
    "raw_answer",
]

Reply = tuple[int, Mapping[str, str], bytes]
Redact = Callable[[str], str]

#: What a server of another kind answers a tokenizer request it does not understand: no
#: such route, or a body it cannot validate. Only while probing is this "try the next".
_MISS = frozenset({400, 404, 405, 422, 501})
#: What a known server answers when the tokenizer route itself is missing.
_NO_ROUTE = frozenset({404, 405, 501})
_MODEL = re.compile(r"\bmodel\b", re.IGNORECASE)

_NAMES = {
    "ollama": "Ollama",
    "lmstudio": "LM Studio",
    "tgi": "TGI",
    "mlx": "mlx-lm",
    "openai": "OpenAI",
    "localai": "LocalAI",
    "llama-cpp-python": "llama-cpp-python",
    "sglang": "SGLang",
    "vllm": "vLLM",
    "llamacpp": "llama.cpp",
}


class Ask(NamedTuple):
    """One request of a driver: ``body`` is a JSON value (None: no body, a GET)."""

    method: str
    url: str
    body: Any = None


class Route(NamedTuple):
    """A tokenizer endpoint: ``name`` says the request shape, ``chat`` whether it can count
    messages with the server's chat template."""

    name: str
    chat: bool


_LLAMACPP = Route("llamacpp", chat=True)
_VLLM = Route("vllm", chat=True)
_SGLANG = Route("sglang", chat=False)
_LLAMA_CPP_PYTHON = Route("llama-cpp-python", chat=False)
_TGI = Route("tgi", chat=True)

_ROUTES = {
    "llamacpp": (_LLAMACPP,),
    "vllm": (_VLLM,),
    "sglang": (_SGLANG,),
    "llama-cpp-python": (_LLAMA_CPP_PYTHON,),
    "tgi": (_TGI,),
    # Known to have no tokenizer endpoint: no request at all.
    "ollama": (),
    "lmstudio": (),
    "mlx": (),
    "openai": (),
}
# Any other server (a proxy, LocalAI, one not identified): each shape in turn.
_PROBE = (_LLAMACPP, _VLLM, _LLAMA_CPP_PYTHON)


class TokenMemory:
    """What one client learned, per endpoint: the server's kind, and the tokenizer route
    that worked."""

    __slots__ = ("kinds", "routes")

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.routes: dict[str, Route] = {}

    def kind(self, endpoint: str, known: str | None) -> str | None:
        """The kind of the server at ``endpoint``: ``known`` (what the client learned
        elsewhere) unless it is unknown, else what a driver here found."""
        if known is not None and known != "unknown":
            return known
        return self.kinds.get(endpoint)


def memory_of(core: ClientCore) -> TokenMemory:
    """The client's memory, made on first use (a client that never counts pays nothing)."""
    memory: TokenMemory | None = getattr(core, "_token_memory", None)
    if memory is None:
        memory = TokenMemory()
        core._token_memory = memory  # type: ignore[attr-defined]
    return memory


def counting(
    core: ClientCore, what: str | MessagesInput, model: str | None
) -> Generator[Ask, Reply, int]:
    """:func:`count_steps` for the client ``core``: its endpoint, what it knows of the
    server, its model unless ``model`` is given."""
    endpoint = core._url("")
    kind = core._caps.kinds.get(endpoint)
    return count_steps(memory_of(core), endpoint, kind, model or core._model, what, core.redact)


def windowing(core: ClientCore, model: str | None) -> Generator[Ask, Reply, int | None]:
    """:func:`context_steps` for the client ``core`` (see :func:`counting`)."""
    endpoint = core._url("")
    kind = core._caps.kinds.get(endpoint)
    return context_steps(memory_of(core), endpoint, kind, model or core._model, core.redact)


def ask_call(core: ClientCore, ask: Ask) -> Call:
    """The request of ``ask``, with the client's headers and timeout."""
    if ask.body is None:
        return Call(ask.method, ask.url, core._get_headers, None, core.timeout)
    return Call(ask.method, ask.url, core._json_headers, _json.dumps(ask.body), core.timeout)


def raw_answer(core: ClientCore, status: int, headers: Mapping[str, str], body: bytes) -> Reply:
    """The answer as it came, for the driver to judge; a status the retry policy retries
    (429, 503...) is raised instead, so that the attempt loop waits and asks again."""
    if status in core.retry.statuses:
        raise core._status_error(status, headers, body)
    return status, headers, body


def _label(kind: str) -> str:
    return _NAMES.get(kind, kind)


def _split(what: str | MessagesInput) -> tuple[str | None, list[Any] | None]:
    """``(text, None)`` for a string, ``(None, wire messages)`` for anything else."""
    if isinstance(what, str):
        return what, None
    return None, normalize_messages(what)


def _payload(reply: Reply) -> Any:
    try:
        return _json.loads(reply[2])
    except ValueError:
        return None


def _count_in(payload: Any) -> int | None:
    """``{"count": n}`` (vLLM, SGLang, llama-cpp-python's /count), ``{"tokens": [...]}``
    (llama.cpp), a list of tokens (TGI) or ``{"tokenize_response": [...]}`` (TGI's chat)."""
    if isinstance(payload, list):
        return len(payload)
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("tokenize_response"), list):
        return len(payload["tokenize_response"])
    count = payload.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    tokens = payload.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def _judge(
    reply: Reply,
    read: Callable[[Any], Any],
    probing: bool,
    redact: Redact,
    what: str,
    route: Route | None = None,
    origin: str = "",
) -> Any:
    """``read(payload)`` of a good answer; None for a miss while probing; else raise."""
    status, headers, body = reply
    if status >= 300:
        if probing and status in _MISS:
            return None
        error = error_from_response(status, headers, body, redact=redact)
        said = body.decode("utf-8", "replace")
        if route is not None and status in _NO_ROUTE and not _MODEL.search(said):
            # The route itself is missing (an older build, or a gateway that forwards only
            # /v1): vLLM's 404 for an unknown model names the model, a missing route
            # (FastAPI's "Not Found", llama.cpp's "File Not Found") does not.
            raise UnsupportedError(
                f"the {_label(route.name)} server at {origin} has no {what} tokenizer route "
                f"(HTTP {status}: an older build, or a proxy that forwards only /v1), so "
                "count_tokens cannot ask it",
                server=route.name,
            ) from error
        raise error
    value = read(_payload(reply))
    if value is None and not probing:
        shown = redact(repr(body[:200]))
        raise DecodeError(f"the server's {what} answer is not what it should be: {shown}")
    return value


def _prompt_in(payload: Any) -> str | None:
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    return prompt if isinstance(prompt, str) else None


def _ask_count(
    route: Route,
    origin: str,
    model: str | None,
    text: str | None,
    messages: list[Any] | None,
    probing: bool,
    redact: Redact,
) -> Generator[Ask, Reply, int | None]:
    """Count with ``route``: the count, or None when probing and the server said no."""
    named: dict[str, Any] = {"model": model} if model else {}
    if route is _LLAMACPP:
        if messages is not None:
            reply = yield Ask("POST", origin + "/apply-template", {"messages": messages})
            if not probing and reply[0] == 404:
                raise UnsupportedError(
                    f"the llama.cpp server at {origin} has no /apply-template (a build older "
                    "than 2025): pass a string to count_tokens, or update the server",
                    server="llamacpp",
                )
            text = _judge(reply, _prompt_in, probing, redact, "/apply-template", route, origin)
            if text is None:
                return None
        reply = yield Ask("POST", origin + "/tokenize", {"content": text, "add_special": True})
        return _judge(reply, _count_in, probing, redact, "/tokenize", route, origin)  # type: ignore[no-any-return]
    if route is _TGI:
        if messages is not None:
            chat = {"model": model or "tgi", "messages": messages}
            reply = yield Ask("POST", origin + "/chat_tokenize", chat)
        else:
            reply = yield Ask("POST", origin + "/tokenize", {"inputs": text})
        path = "/chat_tokenize" if messages is not None else "/tokenize"
        return _judge(reply, _count_in, probing, redact, path, route, origin)  # type: ignore[no-any-return]
    if route is _LLAMA_CPP_PYTHON:
        body: dict[str, Any] = {**named, "input": text}
        reply = yield Ask("POST", origin + "/extras/tokenize/count", body)
        return _judge(reply, _count_in, probing, redact, "/extras/tokenize/count", route, origin)  # type: ignore[no-any-return]
    if messages is not None:  # vLLM: the server applies the chat template
        body = {**named, "messages": messages, "add_generation_prompt": True}
    else:
        body = {**named, "prompt": text, "add_special_tokens": True}
    reply = yield Ask("POST", origin + "/tokenize", body)
    return _judge(reply, _count_in, probing, redact, "/tokenize", route, origin)  # type: ignore[no-any-return]


def count_steps(
    memory: TokenMemory,
    endpoint: str,
    kind: str | None,
    model: str | None,
    what: str | MessagesInput,
    redact: Redact = str,
) -> Generator[Ask, Reply, int]:
    """How many tokens the server's tokenizer makes of ``what``. Raises UnsupportedError
    when the server has no tokenizer endpoint (or none that applies a chat template, for
    messages), also when a server of a known kind answers its route with 404 (an older
    build, or a proxy that forwards only ``/v1``)."""
    text, messages = _split(what)
    origin = origin_of(endpoint)
    known = memory.routes.get(endpoint)
    kind = memory.kind(endpoint, kind)
    if known is not None:
        candidates: tuple[Route, ...] = (known,)
    else:
        if kind is None:
            kind = identify((yield Ask("GET", endpoint + "/models")), None)[0]
            memory.kinds[endpoint] = kind
        candidates = _ROUTES.get(kind, _PROBE)
        if not candidates:
            raise UnsupportedError(
                f"the {_label(kind)} server at {endpoint} has no tokenizer endpoint: "
                "count_tokens needs llama.cpp, vLLM, SGLang, TGI or llama-cpp-python",
                server=kind,
            )
    probing = len(candidates) > 1
    for route in candidates:
        if messages is not None and not route.chat:
            if probing:
                continue
            raise UnsupportedError(
                f"the {_label(route.name)} server at {endpoint} tokenizes plain text only "
                "(it has no chat-template endpoint): pass a string to count_tokens",
                server=route.name,
            )
        count = yield from _ask_count(route, origin, model, text, messages, probing, redact)
        if count is not None:
            memory.routes[endpoint] = route
            return count
    what_kind = "chat messages" if messages is not None else "text"
    raise UnsupportedError(
        f"the server at {endpoint} answered none of the tokenizer endpoints lmlink knows "
        f"for {what_kind} (llama.cpp, vLLM, SGLang, llama-cpp-python, TGI)",
        server=kind or "unknown",
    )


# -- the context window ---------------------------------------------------------------


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _entry(entries: Any, key: str, model: str | None) -> dict[str, Any] | None:
    """The entry of ``model`` in a model list (the first one when no model is named)."""
    if not isinstance(entries, list):
        return None
    found = [e for e in entries if isinstance(e, dict)]
    if model is None:
        return found[0] if found else None
    for entry in found:
        if entry.get(key) == model:
            return entry
    return None


def _n_ctx(payload: Any) -> int | None:
    settings = payload.get("default_generation_settings") if isinstance(payload, dict) else None
    return _whole(settings.get("n_ctx")) if isinstance(settings, dict) else None


_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


def ollama_window(payload: Any) -> int | None:
    """The window in Ollama's ``/api/show`` answer: the ``num_ctx`` the model is run with
    when its parameters set one, else the ``<arch>.context_length`` it was trained for."""
    if not isinstance(payload, dict):
        return None
    params = payload.get("parameters")
    if isinstance(params, str):
        found = _NUM_CTX.search(params)
        if found:
            return int(found.group(1))
    info = payload.get("model_info")
    if not isinstance(info, dict):
        return None
    arch = info.get("general.architecture")
    if isinstance(arch, str):
        value = _whole(info.get(f"{arch}.context_length"))
        if value is not None:
            return value
    for key, value in info.items():  # an architecture not named: any *.context_length
        if isinstance(key, str) and key.endswith(".context_length") and _whole(value):
            return _whole(value)
    return None


def ollama_served(payload: Any, model: str) -> int | None:
    """The window Ollama serves ``model`` with, from ``/api/ps`` (only while it is loaded)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    names = {model, model if ":" in model else model + ":latest"}
    for entry in models if isinstance(models, list) else ():
        if isinstance(entry, dict) and (entry.get("name") in names or entry.get("model") in names):
            return _whole(entry.get("context_length"))
    return None


def _lmstudio_v0(payload: Any, model: str | None) -> int | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    entry = _entry(data, "id", model)
    if entry is None:
        return None
    return _whole(entry.get("loaded_context_length")) or _whole(entry.get("max_context_length"))


def _lmstudio_v1(payload: Any, model: str | None) -> int | None:
    models = payload.get("models") if isinstance(payload, dict) else None
    entry = _entry(models, "key", model)
    if entry is None:
        return None
    for instance in entry.get("loaded_instances") or ():
        config = instance.get("config") if isinstance(instance, dict) else None
        if isinstance(config, dict) and _whole(config.get("context_length")):
            return _whole(config.get("context_length"))
    return _whole(entry.get("max_context_length"))


def _ok(reply: Reply) -> Any:
    """The JSON of a 200 answer, else None (the server does not say)."""
    return _payload(reply) if reply[0] == 200 else None


def context_steps(
    memory: TokenMemory, endpoint: str, kind: str | None, model: str | None, redact: Redact = str
) -> Generator[Ask, Reply, int | None]:
    """The model's context window in tokens, or None when the server does not say."""
    origin = origin_of(endpoint)
    listing = yield Ask("GET", endpoint + "/models")
    if listing[0] >= 300:
        raise error_from_response(*listing, redact=redact)
    kind = memory.kind(endpoint, kind)
    if kind is None:
        kind = identify(listing, None)[0]
        memory.kinds[endpoint] = kind
    payload = _payload(listing)
    data = payload.get("data") if isinstance(payload, dict) else None
    entry = _entry(data, "id", model)
    if model is None and entry is not None and isinstance(entry.get("id"), str):
        model = entry["id"]
    if entry is not None:  # vLLM and SGLang say it in the model list
        found = _whole(entry.get("max_model_len"))
        if found is not None:
            return found
    if kind == "ollama":
        if model is None:
            return None
        served = ollama_served(_ok((yield Ask("GET", origin + "/api/ps"))), model)
        if served is not None:
            return served
        return ollama_window(_ok((yield Ask("POST", origin + "/api/show", {"model": model}))))
    if kind == "lmstudio":
        reply = yield Ask("GET", origin + "/api/v0/models")
        if reply[0] == 200:
            return _lmstudio_v0(_payload(reply), model)
        return _lmstudio_v1(_ok((yield Ask("GET", origin + "/api/v1/models"))), model)
    if kind == "tgi":
        info = _ok((yield Ask("GET", origin + "/info")))
        return _whole(info.get("max_total_tokens")) if isinstance(info, dict) else None
    if kind in ("llamacpp", "unknown", "localai"):
        return _n_ctx(_ok((yield Ask("GET", origin + "/props"))))
    return None

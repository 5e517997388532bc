"""The fake server's tokenizer and context-window routes, in the shape of each real server.

A persona answers where its real server does (``FakeServer(persona="vllm")`` and so on):

- ``llamacpp``: ``POST /tokenize`` ``{"content", "add_special", "with_pieces"}`` →
  ``{"tokens"}`` (an empty list when ``content`` is missing, as llama-server does);
  ``POST /apply-template`` ``{"messages"}`` → ``{"prompt"}``; ``GET /props`` with
  ``default_generation_settings.n_ctx``.
- ``vllm``: ``POST /tokenize`` with ``prompt`` (``add_special_tokens`` true by default) or
  ``messages`` (chat template, ``add_generation_prompt`` true, ``add_special_tokens``
  false by default) → ``{"count", "max_model_len", "tokens", "token_strs"}``; a 400 for
  neither. ``max_model_len`` in ``/v1/models``.
- ``sglang``: ``POST /tokenize`` and ``/v1/tokenize``, ``prompt`` only → ``{"tokens",
  "count", "max_model_len"}``; ``max_model_len`` in ``/v1/models``.
- ``llama-cpp-python``: ``POST /extras/tokenize`` ``{"input"}`` → ``{"tokens"}`` and
  ``/extras/tokenize/count`` → ``{"count"}``, the BOS token always added.
- ``tgi``: ``POST /tokenize`` ``{"inputs"}`` → a list of ``{"id", "text", "start",
  "stop"}`` (BOS first); ``POST /chat_tokenize`` ``{"messages"}`` → ``{"tokenize_response",
  "templated_text"}``; ``GET /info`` with ``max_total_tokens``.
- ``ollama``: ``GET /api/ps`` lists the models a chat request asked for, with
  ``context_length``; ``POST /api/show`` ``{"model"}`` with
  ``model_info["<arch>.context_length"]``.
- ``lmstudio``: ``GET /api/v0/models`` with ``max_context_length``.

The tokenizer is a toy with fixed rules, so that tests can work counts out by hand: a word
with the space before it is one token, so is each digit, each other character, each run
of spaces that is not before a word, and each special token (``<|im_start|>``...); BOS is
token 1. ``"Hello world"`` is 2 tokens, 3 with BOS. Chat messages use the ChatML template:
``<|im_start|>{role}\\n{content}<|im_end|>\\n`` each, then ``<|im_start|>assistant\\n``.

``srv.context_length`` (default 4096; None: the server does not say) is the window every
surface reports.
"""

from __future__ import annotations

import re
import zlib
from typing import TYPE_CHECKING, Any

from ._render import Plan, json_plan

if TYPE_CHECKING:
    from ._http import RecordedRequest
    from ._server import FakeServer

__all__ = ["chat_prompt", "fake_tokens", "serve_tokens", "window_fields"]

_PIECE = re.compile(r"<\|[a-z_]+\|>| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s+")
BOS = 1


def fake_tokens(text: str, *, bos: bool = False) -> list[int]:
    """The toy tokenizer's ids for ``text``. Example: ``len(fake_tokens("Hello world"))`` is 2."""
    ids = [3 + zlib.crc32(piece.encode()) % 32000 for piece in _PIECE.findall(text)]
    return [BOS, *ids] if bos else ids


def _pieces(text: str, bos: bool) -> list[str]:
    return (["<s>"] if bos else []) + _PIECE.findall(text)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def chat_prompt(messages: list[Any], add_generation_prompt: bool = True) -> str:
    """The ChatML prompt of ``messages``. Example: ``chat_prompt([{"role": "user",
    "content": "hi"}])``."""
    out = "".join(
        f"<|im_start|>{m.get('role', 'user')}\n{_text(m.get('content'))}<|im_end|>\n"
        for m in messages
        if isinstance(m, dict)
    )
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def window_fields(entry: dict[str, Any], persona: str | None, window: int | None) -> None:
    """Put the window into a ``/v1/models`` entry where the persona's server does."""
    if persona not in ("vllm", "sglang"):
        return
    if window is None:
        entry.pop("max_model_len", None)
    else:
        entry["max_model_len"] = window


def _bad(status: int, message: str, kind: str = "BadRequestError") -> Plan:
    return json_plan(
        status,
        {"object": "error", "message": message, "type": kind, "param": None, "code": status},
    )


def _llamacpp(srv: FakeServer, path: str, body: dict[str, Any]) -> Plan | None:
    if path == "/tokenize":
        content = body.get("content")
        if not isinstance(content, str):
            return json_plan(200, {"tokens": []})
        bos = body.get("add_special") is True
        ids = fake_tokens(content, bos=bos)
        if body.get("with_pieces") is True:
            pairs = zip(ids, _pieces(content, bos), strict=True)
            return json_plan(200, {"tokens": [{"id": i, "piece": p} for i, p in pairs]})
        return json_plan(200, {"tokens": ids})
    if path == "/apply-template":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return json_plan(
                400, {"error": {"code": 400, "message": "'messages' is required", "type": "x"}}
            )
        return json_plan(200, {"prompt": chat_prompt(messages)})
    return None


def _props(srv: FakeServer) -> Plan:
    settings: dict[str, Any] = {"params": {"temperature": 0.8, "top_k": 40}}
    if srv.context_length is not None:
        settings["n_ctx"] = srv.context_length
    return json_plan(
        200,
        {
            "default_generation_settings": settings,
            "total_slots": 1,
            "model_path": f"/models/{srv.model}.gguf",
            "chat_template": "chatml",
        },
        {"Server": "llama.cpp"},
    )


def _vllm(srv: FakeServer, body: dict[str, Any], chat: bool) -> Plan:
    model = body.get("model")
    if model is not None and model not in srv.models:
        return _bad(404, f"The model `{model}` does not exist.", "NotFoundError")
    messages = body.get("messages") if chat else None
    if isinstance(messages, list):
        special = body.get("add_special_tokens", False) is True
        gen = body.get("add_generation_prompt", True) is not False
        ids = fake_tokens(chat_prompt(messages, gen), bos=special)
    elif isinstance(body.get("prompt"), str):
        special = body.get("add_special_tokens", True) is not False
        ids = fake_tokens(body["prompt"], bos=special)
    else:
        return _bad(400, "1 validation error: field required: prompt")
    answer: dict[str, Any] = {"count": len(ids), "max_model_len": srv.context_length}
    answer["tokens"] = ids
    if chat:
        answer["token_strs"] = None
    return json_plan(200, answer)


def _ollama_show(srv: FakeServer, body: dict[str, Any]) -> Plan:
    name = body.get("model") or body.get("name")
    if name not in srv.models:
        return json_plan(404, {"error": f"model '{name}' not found"})
    info: dict[str, Any] = {"general.architecture": "qwen2", "general.parameter_count": 494032768}
    if srv.context_length is not None:
        info["qwen2.context_length"] = srv.context_length
    return json_plan(
        200,
        {
            "modelfile": f"FROM {name}\n",
            "parameters": 'stop "<|im_start|>"\nstop "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": "qwen2", "quantization_level": "Q4_K_M"},
            "model_info": info,
            "capabilities": ["completion"],
        },
    )


def _ollama_ps(srv: FakeServer) -> Plan:
    """The models loaded: those a chat request asked for (Ollama loads on first use)."""
    chatted = {
        r.json.get("model")
        for r in srv.requests
        if r.method == "POST" and r.path.endswith("/chat/completions") and isinstance(r.json, dict)
    }
    loaded = []
    for m in srv.models:
        if m in chatted:
            entry: dict[str, Any] = {"name": m, "model": m, "size": 1 << 30, "size_vram": 1 << 30}
            if srv.context_length is not None:
                entry["context_length"] = srv.context_length
            loaded.append(entry)
    return json_plan(200, {"models": loaded})


def _lmstudio_models(srv: FakeServer) -> Plan:
    entries = []
    for m in srv.models:
        entry: dict[str, Any] = {
            "id": m,
            "object": "model",
            "type": "llm",
            "publisher": "lmstudio-community",
            "arch": "qwen2",
            "compatibility_type": "gguf",
            "quantization": "Q4_K_M",
            "state": "loaded",
        }
        if srv.context_length is not None:
            entry["max_context_length"] = srv.context_length
        entries.append(entry)
    return json_plan(200, {"object": "list", "data": entries}, {"X-Powered-By": "Express"})


def _tgi_tokens(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"id": BOS, "text": "<s>", "start": 0, "stop": 0}]
    at = 0
    for piece, i in zip(_PIECE.findall(text), fake_tokens(text), strict=True):
        out.append({"id": i, "text": piece, "start": at, "stop": at + len(piece)})
        at += len(piece)
    return out


def _tgi(srv: FakeServer, path: str, request: RecordedRequest, body: dict[str, Any]) -> Plan | None:
    if path == "/info" and request.method == "GET":
        info: dict[str, Any] = {
            "model_id": srv.model,
            "version": "3.3.6",
            "max_client_batch_size": 4,
        }
        if srv.context_length is not None:
            info.update(
                max_input_tokens=srv.context_length - 1, max_total_tokens=srv.context_length
            )
        return json_plan(200, info)
    if request.method != "POST":
        return None
    if path == "/tokenize":
        if not isinstance(body.get("inputs"), str):
            return Plan(
                status=422,
                headers=[("Content-Type", "text/plain; charset=utf-8")],
                body=b"Failed to deserialize the JSON body: missing field `inputs`",
            )
        return json_plan(200, _tgi_tokens(body["inputs"]))
    if path == "/chat_tokenize":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return json_plan(422, {"error": "missing field `messages`", "error_type": "validation"})
        prompt = chat_prompt(messages)
        return json_plan(200, {"tokenize_response": _tgi_tokens(prompt), "templated_text": prompt})
    return None


def serve_tokens(srv: FakeServer, request: RecordedRequest, path: str) -> Plan | None:
    """The answer of a tokenizer or context-window route of ``srv``'s persona, or None
    when the persona has no such route."""
    persona = srv.persona.name if srv.persona is not None else None
    if persona is None:
        return None
    post = request.method == "POST"
    body = request.json if isinstance(request.json, dict) else {}
    if post and not isinstance(request.json, dict):
        return _bad(400, "the body must be a JSON object")
    if persona == "llamacpp":
        if path == "/props" and request.method == "GET":
            return _props(srv)
        return _llamacpp(srv, path, body) if post else None
    if persona == "vllm" and post and path == "/tokenize":
        return _vllm(srv, body, chat=True)
    if persona == "sglang" and post and path in ("/tokenize", "/v1/tokenize"):
        return _vllm(srv, body, chat=False)
    if persona == "llama-cpp-python" and post and path.startswith("/extras/tokenize"):
        text = body.get("input")
        if not isinstance(text, str):
            detail = [{"type": "missing", "loc": ["body", "input"], "msg": "Field required"}]
            return json_plan(422, {"detail": detail})
        ids = fake_tokens(text, bos=True)
        if path == "/extras/tokenize/count":
            return json_plan(200, {"count": len(ids)})
        return json_plan(200, {"tokens": ids}) if path == "/extras/tokenize" else None
    if persona == "tgi":
        return _tgi(srv, path, request, body)
    if persona == "ollama" and path == "/api/ps" and request.method == "GET":
        return _ollama_ps(srv)
    if persona == "ollama" and post and path == "/api/show":
        return _ollama_show(srv, body)
    if persona == "lmstudio" and path == "/api/v0/models" and request.method == "GET":
        return _lmstudio_models(srv)
    return None

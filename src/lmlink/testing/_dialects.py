"""Chunk and body layouts of the real servers (pure).

Each dialect is a small class that turns *semantic* deltas (``{"content": "Hel"}``,
``{"reasoning": "..."}``, ``{"tool_calls": [...]}``) into that server's JSON objects: which
envelope keys in which order, where the role goes, how the finish and usage chunks look, how
tool calls are fragmented and what an in-band error looks like.

Example::

    d = dialect_for("tgi", StreamContext("chatcmpl-1", 1767225600, "m", include_usage=False))
    d.chunk(d.dress({"content": "Hi"}, first=True), None)
    # {'object': 'chat.completion.chunk', 'id': '', ..., 'choices': [{'index': 0,
    #  'delta': {'role': 'assistant', 'content': 'Hi'}, 'logprobs': None, 'finish_reason': None}]}
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, ClassVar

from ._json import dumps, dumps_spaced

__all__ = ["OpenAI", "StreamContext", "ToolCall", "dialect_for", "split_args"]

JSON = dict[str, Any]


@dataclass(frozen=True)
class StreamContext:
    """Constants shared by every chunk: ``StreamContext("chatcmpl-1", 0, "m", False)``."""

    id: str
    created: int
    model: str
    include_usage: bool


@dataclass(frozen=True)
class ToolCall:
    """A normalised tool call: ``ToolCall("call_1", "get_time", '{"tz": "UTC"}')``."""

    id: str
    name: str
    arguments: str


def split_args(text: str, size: int) -> list[str]:
    """Cut a tool call's arguments into ``size``-character fragments (at least one, maybe "").

    >>> split_args('{"a": 1}', 4)
    ['{"a"', ': 1}']
    """
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _fn(call: ToolCall) -> JSON:
    return {"name": call.name, "arguments": call.arguments}


class OpenAI:
    """OpenAI's own layout, the reference the other dialects deviate from.

    Role chunk ``{"role":"assistant","content":"","refusal":null}``, content-only deltas, a
    separate ``delta:{}`` finish chunk, ``"usage":null`` on every chunk when usage was asked
    for, and tool calls as ``{index,id,type,function{name,arguments:""}}`` then argument
    fragments. Example: ``OpenAI(ctx).finish_chunk("stop")``.
    """

    name: ClassVar[str] = "openai"
    reasoning_style: ClassVar[str] = "reasoning_content"
    fingerprint: ClassVar[str | None] = "fp_lmlink"
    # finish_reason rides on the last delta chunk instead of a chunk of its own (TGI).
    finish_inline: ClassVar[bool] = False
    # TGI's tool streams never carry a finish_reason at all.
    finish_on_tools: ClassVar[bool] = True
    # No role-only chunk: the role is repeated inside every delta instead.
    role_in_deltas: ClassVar[bool] = False
    http10: ClassVar[bool] = False
    server_header: ClassVar[str] = "lmlink-fake"
    spaced: ClassVar[bool] = False
    spaced_errors: ClassVar[bool] = False

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    def encode(self, obj: JSON) -> bytes:
        """Serialise a chunk the way this server does (compact, or ``json.dumps`` spacing)."""
        return dumps_spaced(obj) if self.spaced else dumps(obj)

    def encode_error(self, obj: JSON) -> bytes:
        """Serialise an in-band error event (vLLM and SGLang use ``json.dumps`` for these)."""
        return dumps_spaced(obj) if self.spaced_errors or self.spaced else dumps(obj)

    # -- chunk pieces -------------------------------------------------------------------------

    def role_delta(self) -> JSON | None:
        """The delta of the role-only first chunk, or None when the server sends none."""
        return {"role": "assistant", "content": "", "refusal": None}

    def dress(self, delta: JSON, first: bool) -> JSON:
        """Add what this server puts around a semantic delta (role, nulls...)."""
        return delta

    def choice(self, delta: JSON, finish: str | None) -> JSON:
        """One ``choices[]`` entry."""
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def envelope(self, choices: list[JSON]) -> JSON:
        """The chunk object around ``choices``."""
        c = self.ctx
        out: JSON = {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": c.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if c.include_usage:
            out["usage"] = None
        return out

    def chunk(self, delta: JSON, finish: str | None) -> JSON:
        """A whole chunk carrying one delta."""
        return self.envelope([self.choice(delta, finish)])

    def finish_chunk(self, finish: str) -> JSON:
        """The separate chunk that carries ``finish_reason``."""
        return self.chunk({}, finish)

    def usage(self, prompt: int, completion: int) -> JSON:
        """The ``usage`` object."""
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def usage_chunk(self, usage: JSON) -> JSON:
        """The trailing ``choices: []`` chunk sent when ``include_usage`` was requested."""
        out = self.envelope([])
        out["usage"] = usage
        return out

    def tool_deltas(self, calls: list[ToolCall], size: int) -> list[JSON]:
        """Deltas for tool calls: id and name in the first fragment only, arguments split."""
        out: list[JSON] = []
        for i, call in enumerate(calls):
            head = {"index": i, "id": call.id, "type": "function"}
            out.append({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
            for piece in split_args(call.arguments, size):
                if piece:
                    frag = {"index": i, "function": {"arguments": piece}}
                    out.append({"tool_calls": [frag]})
        return out

    def finalize(self, chunks: list[JSON], prompt: int, completion: int) -> None:
        """Last touches on the complete list of chunks (llama.cpp's ``timings``)."""

    def error(self, message: str) -> JSON:
        """The default in-band error event for this server."""
        return {
            "error": {
                "message": message,
                "type": "server_error",
                "param": None,
                "code": "server_error",
            }
        }

    def comment(self) -> str:
        """A keep-alive comment line (without its line ending)."""
        # sse-starlette's ping, as sent by llama-cpp-python; the time is the response's own.
        when = datetime.datetime.fromtimestamp(self.ctx.created, datetime.timezone.utc)
        return f": ping - {when.isoformat(sep=' ')}"

    def preamble(self) -> list[str]:
        """Comment lines this server always sends before the first chunk."""
        return []

    # -- plain (non-stream) body --------------------------------------------------------------

    def completion(self, message: JSON, finish: str, usage: JSON | None) -> JSON:
        """The ``chat.completion`` body for a plain request."""
        body: JSON = {
            "id": self.ctx.id,
            "object": "chat.completion",
            "created": self.ctx.created,
            "model": self.ctx.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
        }
        if usage is not None:
            body["usage"] = usage
        if self.fingerprint is not None:
            body["system_fingerprint"] = self.fingerprint
        return body


class VLLM(OpenAI):
    """vLLM: ``{"role","content":""}`` first, ``stop_reason`` on the finish chunk (whose delta is
    ``{"content":""}``), usage keys in the order prompt/total/completion, reasoning in
    ``reasoning``, errors written with ``json.dumps``. Example: ``VLLM(ctx).finish_chunk("stop")``.
    """

    name = "vllm"
    reasoning_style = "reasoning"
    fingerprint = None
    spaced_errors = True

    def role_delta(self) -> JSON | None:
        return {"role": "assistant", "content": ""}

    def envelope(self, choices: list[JSON]) -> JSON:
        c = self.ctx
        return {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": c.model,
            "choices": choices,
        }

    def finish_chunk(self, finish: str) -> JSON:
        choice = self.choice({"content": ""}, finish)
        choice["stop_reason"] = None
        return self.envelope([choice])

    def usage(self, prompt: int, completion: int) -> JSON:
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }

    def error(self, message: str) -> JSON:
        return {
            "error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}
        }


class LlamaCpp(OpenAI):
    """llama.cpp ``llama-server``: nlohmann key order (``choices`` first), a
    ``{"role":"assistant","content":null}`` first chunk, ``timings`` on the last chunk, bare ``:``
    keep-alives and a ``Server: llama.cpp`` header. Example: ``LlamaCpp(ctx).role_delta()``.
    """

    name = "llamacpp"
    fingerprint = "b6000-aa6192d3"
    server_header = "llama.cpp"

    def role_delta(self) -> JSON | None:
        return {"role": "assistant", "content": None}

    def choice(self, delta: JSON, finish: str | None) -> JSON:
        return {"finish_reason": finish, "index": 0, "delta": delta}

    def envelope(self, choices: list[JSON]) -> JSON:
        c = self.ctx
        return {
            "choices": choices,
            "created": c.created,
            "id": c.id,
            "model": c.model,
            "system_fingerprint": self.fingerprint,
            "object": "chat.completion.chunk",
        }

    def finalize(self, chunks: list[JSON], prompt: int, completion: int) -> None:
        if chunks:
            chunks[-1]["timings"] = {
                "prompt_n": prompt,
                "prompt_ms": 1.0,
                "predicted_n": completion,
                "predicted_ms": 1.0,
            }

    def error(self, message: str) -> JSON:
        return {"error": {"code": 500, "message": message, "type": "server_error"}}

    def comment(self) -> str:
        return ":"


class Ollama(OpenAI):
    """Ollama ≥ PR #17485: role on the first content delta, ``reasoning`` deltas with
    ``"content":""``, whole tool calls in one delta, ``fp_ollama``. Example: ``Ollama(ctx)``.
    """

    name = "ollama"
    reasoning_style = "reasoning"
    fingerprint = "fp_ollama"

    def role_delta(self) -> JSON | None:
        return None

    def dress(self, delta: JSON, first: bool) -> JSON:
        out: JSON = {"role": "assistant"} if first else {}
        if "content" not in delta:
            out["content"] = ""
        out.update(delta)
        return out

    def choice(self, delta: JSON, finish: str | None) -> JSON:
        return {"index": 0, "delta": delta, "finish_reason": finish}

    def tool_deltas(self, calls: list[ToolCall], size: int) -> list[JSON]:
        # Ollama's parser buffers until a call is complete, then sends it whole.
        return [
            {"tool_calls": [{"id": c.id, "index": i, "type": "function", "function": _fn(c)}]}
            for i, c in enumerate(calls)
        ]

    def error(self, message: str) -> JSON:
        return {"error": {"message": message, "type": "api_error", "param": None, "code": None}}


class SGLang(OpenAI):
    """SGLang: pydantic ``model_dump_json`` without exclusions, so every optional field is there
    as ``null`` (``matched_stop``, ``usage``, ``reasoning_content``, ``tool_calls``...); argument
    fragments repeat ``"id":null,"name":null``. Example: ``SGLang(ctx).finish_chunk("stop")``.
    """

    name = "sglang"
    fingerprint = None
    spaced_errors = True
    _NULLS: ClassVar[JSON] = {"role": None, "content": None, "reasoning_content": None}

    def role_delta(self) -> JSON | None:
        return {"role": "assistant", "content": "", "reasoning_content": None, "tool_calls": None}

    def dress(self, delta: JSON, first: bool) -> JSON:
        return {**self._NULLS, "tool_calls": None, **delta}

    def choice(self, delta: JSON, finish: str | None) -> JSON:
        return {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
            "matched_stop": None,
        }

    def envelope(self, choices: list[JSON]) -> JSON:
        c = self.ctx
        return {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": c.model,
            "choices": choices,
            "usage": None,
        }

    def finish_chunk(self, finish: str) -> JSON:
        return self.chunk(self.dress({}, False), finish)

    def tool_deltas(self, calls: list[ToolCall], size: int) -> list[JSON]:
        out: list[JSON] = []
        for i, call in enumerate(calls):
            fn: JSON = {"name": call.name, "arguments": ""}
            out.append(
                {"tool_calls": [{"id": call.id, "index": i, "type": "function", "function": fn}]}
            )
            for piece in split_args(call.arguments, size):
                if piece:
                    fn = {"name": None, "arguments": piece}
                    frag = {"id": None, "index": i, "type": "function", "function": fn}
                    out.append({"tool_calls": [frag]})
        return out

    def error(self, message: str) -> JSON:
        return {
            "error": {
                "object": "error",
                "message": message,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        }


class TGI(OpenAI):
    """Hugging Face TGI: ``object`` first, ``"id":""`` everywhere, role in every delta, no
    role-only chunk, ``finish_reason`` on the last token chunk, **none at all** in tool streams,
    reasoning inline as ``<think>``. Example: ``TGI(ctx).chunk({"content": "x"}, None)``.
    """

    name = "tgi"
    reasoning_style = "think"
    fingerprint = "3.3.6-native"
    finish_inline = True
    finish_on_tools = False
    role_in_deltas = True

    def role_delta(self) -> JSON | None:
        return None

    def dress(self, delta: JSON, first: bool) -> JSON:
        return {"role": "assistant", **delta}

    def envelope(self, choices: list[JSON]) -> JSON:
        c = self.ctx
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": c.created,
            "model": c.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": None,
        }

    def tool_deltas(self, calls: list[ToolCall], size: int) -> list[JSON]:
        out: list[JSON] = []
        for i, call in enumerate(calls):
            for n, piece in enumerate(split_args(call.arguments, size)):
                fn = {"name": call.name if n == 0 else None, "arguments": piece}
                frag = {"index": i, "id": call.id, "type": "function", "function": fn}
                out.append({"tool_calls": [frag]})
        return out

    def error(self, message: str) -> JSON:
        return {"error": {"message": message, "http_status_code": 422}}

    def comment(self) -> str:
        return ":"

    def completion(self, message: JSON, finish: str, usage: JSON | None) -> JSON:
        body = super().completion(message, finish, usage)
        body["id"] = ""
        return body


class MLX(OpenAI):
    """mlx-lm: HTTP/1.0 and close-delimited, ``json.dumps`` spacing, role in every delta (no
    ``content`` key when empty), whole tool calls, ``: keepalive N/M`` comments while the prompt
    is processed, a usage chunk labelled ``"object":"chat.completion"``. Example: ``MLX(ctx)``.
    """

    name = "mlx"
    reasoning_style = "reasoning"
    fingerprint = "0.30.2-0.28.0-macOS-15.5-arm64"
    finish_inline = False
    role_in_deltas = True
    http10 = True
    server_header = "BaseHTTP/0.6 Python/3.12.11"
    spaced = True

    def role_delta(self) -> JSON | None:
        return None

    def dress(self, delta: JSON, first: bool) -> JSON:
        return {"role": "assistant", **delta}

    def choice(self, delta: JSON, finish: str | None) -> JSON:
        return {"index": 0, "finish_reason": finish, "delta": delta}

    def envelope(self, choices: list[JSON]) -> JSON:
        c = self.ctx
        return {
            "id": c.id,
            "system_fingerprint": self.fingerprint,
            "object": "chat.completion.chunk",
            "model": c.model,
            "created": c.created,
            "choices": choices,
        }

    def finish_chunk(self, finish: str) -> JSON:
        return self.chunk({"role": "assistant"}, finish)

    def usage_chunk(self, usage: JSON) -> JSON:
        out = self.envelope([])
        out["object"] = "chat.completion"
        out["usage"] = usage
        return out

    def tool_deltas(self, calls: list[ToolCall], size: int) -> list[JSON]:
        # Whole calls once the closing tag is parsed, in mlx-lm's key order.
        return [
            {"tool_calls": [{"function": _fn(c), "type": "function", "id": c.id, "index": i}]}
            for i, c in enumerate(calls)
        ]

    def error(self, message: str) -> JSON:
        return {"error": message}

    def comment(self) -> str:
        return ": keepalive 512/512"

    def preamble(self) -> list[str]:
        return [": keepalive 256/512", ": keepalive 512/512"]


_BY_NAME: dict[str, type[OpenAI]] = {
    cls.name: cls for cls in (OpenAI, VLLM, LlamaCpp, Ollama, SGLang, TGI, MLX)
}


def dialect_for(name: str, ctx: StreamContext) -> OpenAI:
    """The chunk builder for a dialect name. Example: ``dialect_for("vllm", ctx).role_delta()``."""
    return _BY_NAME[name](ctx)

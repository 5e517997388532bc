"""The fake server's ``POST /v1/embeddings``: deterministic vectors, and the ways real
servers answer.

Every text gets the same unit vector every time (its SHAKE-256 digest, a byte per dimension),
so tests can compare vectors across calls and runs. ``dimensions`` gives shorter vectors,
``encoding_format: "base64"`` base64 of little-endian float32 (as vLLM, llama-server and
Ollama send it), and ``usage.prompt_tokens`` counts words. :class:`EmbedSettings` (the
server's ``embed`` attribute) adds what real servers do differently: entries out of order,
no usage, floats where base64 was asked (older Ollama), models that cannot embed (the 501
of llama-server without ``--embeddings``, which Ollama passes on for chat models), and an
input that fails the whole request (a text too long for the model, say).
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from ._render import Plan, json_plan

__all__ = ["EmbedSettings", "embedding_of", "render_embeddings"]

#: The vector size when the request gives no ``dimensions``.
DEFAULT_DIMENSIONS = 8

_CANNOT_EMBED = "This server does not support embeddings. Start it with `--embeddings`"


@dataclass
class EmbedSettings:
    """How ``/v1/embeddings`` answers (settable while the server runs).

    Example::

        srv.embed = EmbedSettings(order="reversed", usage=False, fail_on="BAD")

    ``dimensions``: the vector size when a request asks none. ``order``: ``"index"``, or
    ``"reversed"`` (the entries come last to first, each with its true ``index``).
    ``usage``: whether the answer has ``usage``. ``base64``: whether ``encoding_format:
    "base64"`` is honoured (False answers floats, like older Ollama). ``models``: the
    models that embed (None: all); any other model gets llama-server's 501 (``refusal=
    "vllm"``: vLLM's 400 "The model does not support Embeddings API"). ``fail_on``: a
    request with a text containing this string gets a 400, as a text longer than the
    model's context does. ``max_batch``: more inputs than this in one request get TEI's
    422 "batch size N > maximum allowed batch size M". ``delay`` + ``delay_per_input`` times
    the number of inputs: how long each answer takes (a request's fixed cost and its
    inputs' share).
    """

    dimensions: int = DEFAULT_DIMENSIONS
    order: Literal["index", "reversed"] = "index"
    usage: bool = True
    base64: bool = True
    models: Collection[str] | None = None
    refusal: Literal["llamacpp", "vllm"] = "llamacpp"
    fail_on: str | None = None
    max_batch: int | None = None
    delay: float = 0.0
    delay_per_input: float = 0.0


def embedding_of(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake server's vector of ``text``: deterministic, unit length.

    >>> len(embedding_of("hello", 4)), round(sum(x * x for x in embedding_of("hello")), 6)
    (4, 1.0)
    """
    raw = [b / 127.5 - 1.0 for b in hashlib.shake_256(text.encode()).digest(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # float32 values, so that base64 and JSON answers carry the same numbers.
    return array("f", [x / norm for x in raw]).tolist()


def _error(status: int, message: str, kind: str) -> Plan:
    return json_plan(status, {"error": {"code": status, "message": message, "type": kind}})


def render_embeddings(body: Any, settings: EmbedSettings, *, model: str) -> Plan:
    """The response to one embeddings request (``body`` is its parsed JSON)."""
    if not isinstance(body, dict):
        return _error(
            400, "Invalid JSON in request body: expected an object", "invalid_request_error"
        )
    name = body.get("model") if isinstance(body.get("model"), str) else model
    if settings.models is not None and name not in settings.models:
        if settings.refusal == "vllm":
            refused = {
                "object": "error",
                "message": "The model does not support Embeddings API",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
            return json_plan(400, refused)
        return _error(501, _CANNOT_EMBED, "not_supported_error")
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return _error(
            400, '"input" must be a string or a non-empty list of strings', "invalid_request_error"
        )
    if settings.max_batch is not None and len(texts) > settings.max_batch:
        message = f"batch size {len(texts)} > maximum allowed batch size {settings.max_batch}"
        return json_plan(422, {"error": message, "error_type": "Validation"})
    size = body.get("dimensions", settings.dimensions)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return _error(400, '"dimensions" must be a positive integer', "invalid_request_error")
    if settings.fail_on is not None:
        for n, text in enumerate(texts):
            if settings.fail_on in text:
                message = (
                    f"input {n} is too large to process. increase the physical batch size "
                    "(the context length of this model is exceeded)"
                )
                return _error(400, message, "invalid_request_error")
    as_base64 = body.get("encoding_format") == "base64" and settings.base64
    data: list[dict[str, Any]] = []
    for index, text in enumerate(texts):
        vector = embedding_of(text, size)
        entry: dict[str, Any] = {"object": "embedding", "index": index}
        if as_base64:
            packed = array("f", vector)
            if sys.byteorder == "big":  # the wire is little-endian
                packed.byteswap()
            entry["embedding"] = base64.b64encode(packed.tobytes()).decode("ascii")
        else:
            entry["embedding"] = vector
        data.append(entry)
    if settings.order == "reversed":
        data.reverse()
    answer: dict[str, Any] = {"object": "list", "data": data, "model": name}
    if settings.usage:
        tokens = sum(max(1, len(t.split())) for t in texts)
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    plan = json_plan(200, answer)
    plan.wait = settings.delay + settings.delay_per_input * len(texts)
    return plan

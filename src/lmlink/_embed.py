"""Embeddings, pure: the request of ``POST /embeddings`` and the decoding of its answer.

``client.embed(texts)`` and ``await aclient.embed(texts)`` share everything here; the two
shells only send the :class:`~lmlink._core.Call` this module plans and hand the answer's
bytes back to :func:`embed_answer`. The call goes through the client's attempt loop, so
retries, timeouts, per-call options (``timeout=``, ``headers=``, ``extra_body=``) and typed
errors are those of ``chat``.

The answer is OpenAI's shape, ``{"data": [{"index", "embedding"}], "model", "usage":
{"prompt_tokens"}}``, read as the local servers really send it: entries sorted by their
``index`` (a server may answer out of order), an embedding as a list of numbers or, when
``encoding_format="base64"`` was asked, as base64 of little-endian float32 (vLLM,
llama-server, Ollama, LocalAI), a missing ``usage`` (or LocalAI's zeros) as
``prompt_tokens=None``, and an error object on HTTP 200 as the typed error it reports.
"""

from __future__ import annotations

import base64
import binascii
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _json
from ._errmap import error_from_payload
from ._errors import ConfigurationError, DecodeError, clip
from ._options import split_options
from ._wire import loads

if TYPE_CHECKING:
    from ._core import Call, ClientCore

__all__ = ["Embeddings", "decode_embeddings", "embed_answer", "embed_call", "embed_inputs"]


class Embeddings:
    """The vectors of one ``embed`` call, in the order of its inputs.

    >>> e = client.embed(["a cat", "a dog"])
    >>> len(e.vectors), len(e.vectors[0])      # (2, 768)
    >>> e.prompt_tokens, e.model               # (4, 'nomic-embed-text'); None when unsaid

    ``latency_s`` is the time the whole call took (retries included).
    """

    __slots__ = ("latency_s", "model", "prompt_tokens", "vectors")

    def __init__(
        self,
        vectors: list[list[float]],
        prompt_tokens: int | None = None,
        model: str | None = None,
        latency_s: float | None = None,
    ) -> None:
        self.vectors = vectors
        self.prompt_tokens = prompt_tokens
        self.model = model
        self.latency_s = latency_s

    def __len__(self) -> int:
        return len(self.vectors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Embeddings):
            return NotImplemented
        return (self.vectors, self.prompt_tokens, self.model) == (
            other.vectors,
            other.prompt_tokens,
            other.model,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        size = len(self.vectors[0]) if self.vectors else 0
        return (
            f"Embeddings({len(self.vectors)} vectors of {size}, model={self.model!r}, "
            f"prompt_tokens={self.prompt_tokens!r})"
        )


def embed_inputs(inputs: str | Sequence[str]) -> list[str]:
    """The texts of a call: one string, or a non-empty sequence of strings."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (bytes, Mapping)) or not isinstance(inputs, Sequence):
        raise ConfigurationError(
            f"embed() takes a string or a list of strings, not {type(inputs).__name__}"
        )
    texts = list(inputs)
    if not texts:
        raise ConfigurationError("embed() needs at least one text")
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigurationError(f"embed() takes strings; input {n} is {type(text).__name__}")
    return texts


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"dimensions must be a positive integer, not {value!r}")
    return value


def embed_body(
    model: str, texts: list[str], dimensions: int | None, fields: Mapping[str, Any]
) -> bytes:
    """The JSON body: ``{"model", "input", "dimensions"?}`` and any extra ``fields``
    (``encoding_format="base64"``, a server's own options)."""
    body: dict[str, Any] = {"model": model, "input": texts}
    if dimensions is not None:
        body["dimensions"] = dimensions
    body.update(fields)
    try:
        return _json.dumps(body)
    except TypeError as exc:
        raise ConfigurationError(f"the request cannot be encoded as JSON: {exc}") from exc


def embed_call(
    core: ClientCore,
    inputs: str | Sequence[str],
    model: str | None,
    dimensions: int | None,
    extra: dict[str, Any],
) -> tuple[Call, int]:
    """The request of one ``embed`` call and how many vectors its answer must hold;
    everything is checked here, once, before anything is sent."""
    from ._core import Call, _with_headers

    texts = embed_inputs(inputs)
    size = _dimensions(dimensions)
    options, fields = split_options(extra) if extra else (None, {})
    if "input" in fields:
        raise ConfigurationError(
            "input is not a body field here: pass the texts as embed()'s first argument"
        )
    if size is not None and "dimensions" in fields:
        raise ConfigurationError("dimensions is given twice, as dimensions= and in extra_body")
    url = core._url("/embeddings")  # "no endpoint" comes before "no model"
    name = model or core.model
    if not name:
        raise ConfigurationError(
            "no model: pass model= or set LMLINK_MODEL (client.models() lists the server's models)"
        )
    headers = core._json_headers
    timeout = core.timeout
    if options is not None:
        if options.headers:
            headers = _with_headers(headers, options.headers)
        timeout = options.timeout or timeout
    call = Call("POST", url, headers, embed_body(name, texts, size, fields), timeout)
    if options is not None and options.secrets:
        call.redactor = core._redactor.plus(options.secrets)
    return call, len(texts)


def embed_answer(
    core: ClientCore,
    call: Call,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    count: int,
) -> Embeddings:
    """The vectors of an ``/embeddings`` response, or the error it reports."""
    if status >= 300:
        raise core._status_error(status, headers, body)
    redact = core.redact if call.redactor is None else call.redactor
    out = decode_embeddings(body, count, redact=redact)
    out.latency_s = time.monotonic() - call.started
    return out


def decode_embeddings(body: bytes, count: int, *, redact: Any = str) -> Embeddings:
    """The :class:`Embeddings` of an answer body that must hold ``count`` vectors.

    >>> decode_embeddings(b'{"data":[{"index":1,"embedding":[2]},{"index":0,"embedding":[1]}]}',
    ...                   2).vectors
    [[1.0], [2.0]]
    """
    payload = loads(body, "the embeddings answer", redact)
    error = error_from_payload(payload, redact=redact)
    if error is not None:
        raise error
    if not isinstance(payload, dict):
        raise _bad(payload, "is not a JSON object", redact)
    data = payload.get("data")
    if not isinstance(data, list):
        raise _bad(payload, "has no 'data' array", redact)
    if len(data) != count:
        raise _bad(payload, f"holds {len(data)} vectors for {count} inputs", redact)
    slots: list[list[float] | None] = [None] * count
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise _bad(payload, f"entry {position} is not an object", redact)
        index = entry.get("index", position)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise _bad(payload, f"entry {position} has index {index!r}", redact)
        if slots[index] is not None:
            raise _bad(payload, f"index {index} appears twice", redact)
        slots[index] = _vector(entry.get("embedding"), position, payload, redact)
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        # LocalAI sends a usage of zeros: no text is 0 tokens, so it was not counted.
        tokens = None
    model = payload.get("model")
    return Embeddings(
        [v for v in slots if v is not None],
        prompt_tokens=tokens,
        model=model if isinstance(model, str) else None,
    )


def _vector(value: Any, position: int, payload: Any, redact: Any) -> list[float]:
    """One embedding as floats: a list of numbers, or base64 of little-endian float32."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(payload, f"entry {position}'s embedding is not base64", redact) from None
        if len(raw) % 4:
            raise _bad(payload, f"entry {position}'s base64 is not float32 data", redact)
        floats = array("f")
        floats.frombytes(raw)
        if sys.byteorder == "big":  # the wire is little-endian (numpy's "<f4")
            floats.byteswap()
        return floats.tolist()
    if isinstance(value, list):
        try:
            return array("d", value).tolist()  # floats, checked in C: vectors are long
        except TypeError:
            wrong = next(n for n in value if not isinstance(n, (int, float)))
            raise _bad(payload, f"entry {position}'s embedding holds {wrong!r}", redact) from None
    raise _bad(payload, f"entry {position} has no embedding", redact)


def _bad(payload: Any, why: str, redact: Any) -> DecodeError:
    shown = clip(redact(_json.text(payload)), 200)
    return DecodeError(f"the embeddings answer {why}: {shown}")

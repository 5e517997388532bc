"""Error bodies of every server, normalised into the exception tree (pure).

Servers disagree on the shape::

    {"error": {"message", "type", "param", "code"}}       OpenAI, Ollama, vLLM >= 0.10.1, llama.cpp
    {"object": "error", "message", "type", "code"}        vLLM < 0.10.1, SGLang
    {"error": "text"}                                      vLLM/SGLang 401, mlx-lm, LM Studio
    {"error": "text", "error_type": "validation"}          TGI
    {"detail": ...}                                        FastAPI (llama-cpp-python 401)
    plain text or nothing                                  TGI 401, mlx-lm 404, llama.cpp 500

and on the status (a context overflow is 400, 422, 500 or an in-band error on 200), so the
class is chosen from the message first and the status second (rule 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from . import _json
from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    InternalServerError,
    ModelLoadingError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    clip,
)
from ._retry import parse_retry_after

__all__ = ["error_from_payload", "error_from_response", "extract_error"]

_CONTEXT = re.compile(
    r"context[_ ]length|context window|context size|exceed_context|maximum context"
    r"|longer than the model|n_keep|tokens \+ `?max_new_tokens`? must be"
    r"|'max_tokens' or 'max_completion_tokens' is too large|prompt is too long"
    r"|input is too long|too many tokens|exceeds? the (?:available )?context",
    re.IGNORECASE,
)
_LOADING = re.compile(r"loading model|model_loading|model is loading|still loading", re.I)
_OVERLOADED = re.compile(
    r"overloaded|server busy|queue is full|too many (?:concurrent )?requests|try again later",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"not found|does not exist|unexpected endpoint|no such model", re.I)
_INVALID_JSON = re.compile(
    r"parse error|invalid json|json_parse|failed to parse|syntax error", re.I
)

_LABELS: dict[type[APIStatusError], str] = {
    RateLimitError: "rate limit",
    OverloadedError: "overloaded",
    ModelLoadingError: "overloaded: the model is still loading",
    ContextLengthError: "context length exceeded",
    BadRequestError: "bad request",
    AuthenticationError: "authentication failed",
    PermissionDeniedError: "permission denied",
    NotFoundError: "not found",
    InternalServerError: "server error",
    APIStatusError: "error",
}

_HINTS: dict[type[APIStatusError], str] = {
    ContextLengthError: "shorten the prompt or lower max_tokens",
    AuthenticationError: "set api_key= or LMLINK_API_KEY",
    NotFoundError: "check the model name (client.models()) and that the endpoint ends in /v1",
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return _json.text(value)


def extract_error(payload: Any) -> tuple[str, str | None, str | None, int | None] | None:
    """``(message, type, code, status)`` from an error object of any known shape, or None
    when ``payload`` is not an error."""
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if isinstance(err, dict):
        message = _text(err.get("message")) or _text(err.get("msg")) or _text(err) or ""
        kind = _text(err.get("type"))
        code_value = err.get("code")
        status = err.get("http_status_code", code_value)
        return message, kind, _text(code_value), status if isinstance(status, int) else None
    if isinstance(err, str) and err:
        kind = _text(payload.get("error_type") or payload.get("type"))
        status = payload.get("code")
        return err, kind, _text(payload.get("code")), status if isinstance(status, int) else None
    if payload.get("object") == "error":
        code_value = payload.get("code")
        return (
            _text(payload.get("message")) or "",
            _text(payload.get("type")),
            _text(code_value),
            code_value if isinstance(code_value, int) else None,
        )
    if "detail" in payload and len(payload) <= 2:
        return _text(payload["detail"]) or "", None, None, None
    return None


def _classify(
    status: int, message: str, kind: str | None, code: str | None
) -> type[APIStatusError]:
    words = " ".join(filter(None, (message, kind, code)))
    if _CONTEXT.search(words):
        return ContextLengthError
    if _LOADING.search(words) and status in (0, 200, 503):
        return ModelLoadingError
    if status == 429:
        return RateLimitError
    if status == 503 or (
        status in (0, 200) and (kind == "overloaded" or _OVERLOADED.search(words))
    ):
        return OverloadedError
    if status in (400, 422) or (kind and "invalid_request" in kind) or kind == "validation":
        return BadRequestError
    if status == 401 or (kind and "authentication" in kind):
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404 or (status in (0, 200) and _NOT_FOUND.search(words)):
        return NotFoundError
    if status >= 500 and _INVALID_JSON.search(words):
        return BadRequestError  # llama.cpp answers a malformed body with 500
    if status >= 500:
        return InternalServerError
    if status in (0, 200):
        return BadRequestError if kind == "template_error" else APIStatusError
    return APIStatusError


def _build(
    status: int,
    message: str,
    kind: str | None,
    code: str | None,
    body_text: str,
    retry_after: float | None,
    redact: Callable[[str], str],
) -> APIStatusError:
    cls = _classify(status, message, kind, code)
    label = _LABELS.get(cls, "error")
    where = f"HTTP {status}" if status not in (0, 200) else "in-band"
    if cls is RateLimitError and status != 429:
        where = f"{where} 429"
    if issubclass(cls, OverloadedError) and status != 503:
        where = f"{where} 503"
    detail = clip(redact(message.strip()), 300) if message.strip() else "(no message)"
    text = f"{where} {label}: {detail}"
    hint = _HINTS.get(cls)
    if hint:
        text += f" ({hint})"
    if retry_after is not None:
        text += f" [retry after {retry_after:g} s]"
    return cls(
        text,
        status_code=status,
        body=clip(redact(body_text)),
        retry_after=retry_after,
        error_type=redact(kind) if kind else kind,
        error_code=redact(code) if code else code,
    )


def error_from_payload(
    payload: Any,
    *,
    status: int = 200,
    body_text: str | None = None,
    redact: Callable[[str], str] = str,
) -> APIStatusError | None:
    """The error a decoded JSON object reports (in-band on a 200, or inside a stream), or
    None if it reports none. An embedded ``code``/``http_status_code`` becomes the status."""
    found = extract_error(payload)
    if found is None:
        return None
    message, kind, code, embedded = found
    if status in (0, 200) and embedded is not None and 400 <= embedded <= 599:
        status = embedded
    text = body_text if body_text is not None else _json.text(payload)
    return _build(status, message, kind, code, text, None, redact)


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    redact: Callable[[str], str] = str,
) -> APIStatusError:
    """The error for an HTTP response with ``status`` >= 400 (or an in-band error body)."""
    text = body.decode("utf-8", "replace")
    retry_after = parse_retry_after(headers)
    message, kind, code = text.strip(), None, None
    try:
        payload = _json.loads(body) if body.strip() else None
    except ValueError:
        payload = None
    found = extract_error(payload)
    if found is not None:
        message, kind, code, _ = found
    elif isinstance(payload, dict) and isinstance(payload.get("message"), str):
        message = payload["message"]
    if not message:
        message = "(empty body)"
    if 300 <= status < 400:
        where = headers.get("location", "another URL")
        message = (
            f"redirected to {where}; lmlink does not follow redirects (they would carry the "
            "API key to another server): set the endpoint to the final URL"
        )
    return _build(status, message, kind, code, text, retry_after, redact)

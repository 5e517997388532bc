"""What became of one item, pure: its output line, and how its failure counts.

- *per item* (a 400, a timeout, a cut stream, output that does not match the schema): the
  item gets an error line and the run goes on;
- *overload* (429, a 503 that is not a model loading, 504, a timeout): also per item, and
  a signal to the limiter to send less;
- *fatal* (no server, refused connections, a bad key, an unknown model): every other item
  would fail the same way, so the run stops without writing a line for it; a re-run picks
  up where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmlink._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    LMLinkError,
    ModelLoadingError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    StreamError,
    StructuredOutputError,
)
from lmlink._models import ChatResponse

from ._input import BatchItem
from ._tasks import Task

__all__ = ["error_record", "is_fatal", "is_overload", "scrub", "success_record"]

_UNREACHABLE = frozenset({"refused", "dns", "tls"})


def is_fatal(exc: LMLinkError, item: BatchItem) -> bool:
    """True for failures that every other item would hit too."""
    if isinstance(exc, ConfigurationError):
        return not item.options  # a row's own bad option is that row's problem
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return True
    if isinstance(exc, NotFoundError):
        return "model" not in item.options  # the run's model, or the route, is missing
    return (
        isinstance(exc, APIConnectionError)
        and not isinstance(exc, (APITimeoutError, StreamError))
        and exc.reason in _UNREACHABLE
    )


def is_overload(exc: LMLinkError) -> bool:
    """True for failures that say the server wants fewer requests at once."""
    if isinstance(exc, ModelLoadingError):
        return False
    if isinstance(exc, (RateLimitError, OverloadedError, APITimeoutError)):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code == 504


def _json_value(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def scrub(value: Any, redact: Callable[[str], str]) -> Any:
    """``value`` with ``redact`` applied to every string in it, keys included: an answer
    that echoes the API key must not carry it into the output file or the cache."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(k, redact): scrub(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, redact) for v in value]
    return value


def success_record(
    item_id: str, resp: ChatResponse, task: Task, redact: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """The output line of an answer, its strings passed through ``redact``."""
    parsed = _json_value(resp.parsed)
    record = {
        "content": resp.content,
        "reasoning": resp.reasoning,
        "parsed": parsed,
        "finish_reason": resp.finish_reason,
        "prompt_tokens": resp.prompt_tokens,
        "output_tokens": resp.output_tokens,
        "latency_s": _round(resp.latency_s),
        "ttft_s": _round(resp.ttft_s),
        "model": resp.model,
        **task.extra_fields(parsed),
    }
    if redact is not None:
        # The record's own keys are constant; only its values can carry a secret.
        record = {
            k: redact(v) if isinstance(v, str) else scrub(v, redact) if v else v
            for k, v in record.items()
        }
    return {"id": item_id, **record}


def error_record(
    item_id: str, exc: LMLinkError, redact: Callable[[str], str] = str
) -> dict[str, Any]:
    """The output line of a failure; ``type`` is the lmlink error class name. The message
    goes through ``redact`` too: the client blanks its errors, this guards the file. An
    answer that failed its schema keeps the model's text as ``raw``."""
    # 0: an error lmlink raised without asking (a prompt too long to send).
    status = exc.status_code or None if isinstance(exc, APIStatusError) else None
    message = redact(str(exc))
    error: dict[str, Any] = {"type": type(exc).__name__, "message": message, "status_code": status}
    if isinstance(exc, StructuredOutputError):
        error["raw"] = redact(exc.raw)  # the model's answer: why it did not validate
    return {"id": item_id, "error": error}

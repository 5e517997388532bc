"""The OpenAI chat wire format, pure: request bodies out, responses and stream chunks in.

Decoding is written for the servers as they are: ``choices`` may be null
or empty, deltas repeat ``role`` and carry ``null`` everywhere, reasoning comes as
``reasoning_content``, ``reasoning`` or inline ``<think>`` tags, tool-call fragments may
lack their ``index``, and an ``{"error": ...}`` object can arrive on a 200.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _json
from ._errors import ConfigurationError, DecodeError, clip
from ._models import Message, ModelInfo

__all__ = [
    "build_chat_body",
    "decode_models",
    "finish_word",
    "normalize_messages",
    "response_format_payload",
]


MessagesInput = str | Message | Mapping[str, Any] | Sequence[Message | Mapping[str, Any]]

# Server synonyms for the OpenAI finish words.
_FINISH = {
    "stop_sequence": "stop",
    "eos_token": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "function_call": "tool_calls",
    "max_tokens": "length",
}


def finish_word(raw: str | None) -> str | None:
    """The OpenAI finish word for a server's ``finish_reason``."""
    if raw is None:
        return None
    return _FINISH.get(raw, raw)


def normalize_messages(messages: MessagesInput) -> list[Any]:
    """Accept a str, a Message, a dict, or a list of Messages/dicts; return wire dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if type(messages) is list and messages:  # the common case, without the ABC checks
        return [
            item if type(item) is dict and "role" in item else _one_message(item, i)
            for i, item in enumerate(messages)
        ]
    if isinstance(messages, Message):
        return [messages.to_dict()]
    if isinstance(messages, Mapping):
        return [_check_message(messages, 0)]
    if not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray)):
        raise ConfigurationError(
            "messages must be a str, a Message, or a list of messages, "
            f"not {type(messages).__name__}"
        )
    if not messages:
        raise ConfigurationError("messages is empty: give at least one message")
    return [_one_message(item, i) for i, item in enumerate(messages)]


def _one_message(item: Any, index: int) -> Any:
    return item.to_dict() if isinstance(item, Message) else _check_message(item, index)


def _check_message(item: Any, index: int) -> Any:
    if not isinstance(item, Mapping):
        raise ConfigurationError(
            f"messages[{index}] must be a dict or lmlink.Message, not {type(item).__name__}"
        )
    if "role" not in item:
        raise ConfigurationError(f"messages[{index}] has no 'role'")
    return item if isinstance(item, dict) else dict(item)


# "type" values of a wire response_format; a JSON schema's own "type" is "object" etc.
_WIRE_TYPES = frozenset({"json_object", "json_schema", "text", "json", "regex"})


def response_format_payload(response_format: Any) -> Any:
    """The wire ``response_format`` for ``None | "json" | dict schema | pydantic class``."""
    if response_format is None:
        return None
    if response_format == "json":
        return {"type": "json_object"}
    if isinstance(response_format, str):
        if response_format in ("text", "json_object"):
            return {"type": response_format}
        raise ConfigurationError(
            f'response_format must be None, "json", a JSON schema dict or a pydantic model '
            f"class, not {response_format!r}"
        )
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if isinstance(kind, str) and kind in _WIRE_TYPES:
            return dict(response_format)  # already the wire form: {"type": "json_schema", ...}
        schema = dict(response_format)
        title = schema.get("title")
        name = title if isinstance(title, str) else "response"
        return {"type": "json_schema", "json_schema": {"name": _safe_name(name), "schema": schema}}
    schema_fn = getattr(response_format, "model_json_schema", None)
    if isinstance(response_format, type) and callable(schema_fn):
        schema = schema_fn()
        return {
            "type": "json_schema",
            "json_schema": {"name": _safe_name(response_format.__name__), "schema": schema},
        }
    raise ConfigurationError(
        f'response_format must be None, "json", a JSON schema dict or a pydantic model class, '
        f"not {type(response_format).__name__}"
    )


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "response"


def build_chat_body(
    model: str,
    messages: list[Any],
    *,
    stream: bool,
    temperature: float | None = None,
    max_tokens: int | None = None,
    response_format: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON body of ``POST /chat/completions``; optional fields only when given."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if response_format is not None:
        body["response_format"] = response_format
    if extra:
        body.update(extra)
    try:
        return _json.dumps(body)
    except TypeError as exc:
        raise ConfigurationError(f"the request cannot be encoded as JSON: {exc}") from exc


def loads(data: bytes, what: str, redact: Callable[[str], str] = str) -> Any:
    """Parse JSON, failing with a DecodeError that shows the start of the data (redacted)."""
    try:
        return _json.loads(data)
    except ValueError as exc:
        snippet = clip(redact(data.decode("utf-8", "replace")), 200)
        raise DecodeError(f"{what} is not valid JSON ({exc}): {snippet!r}") from exc


def text_of(content: Any) -> str:
    """Message content as text: strings as they are, content-part lists joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_part(p) for p in content)
    return _json.as_str(content)


def _text_part(part: Any) -> str:
    if isinstance(part, dict):
        text = part.get("text")
        return _json.as_str(text) if text else ""
    return _json.as_str(part)


def decode_models(body: bytes, redact: Callable[[str], str] = str) -> list[ModelInfo]:
    """The model list of ``GET /models`` (OpenAI ``data``, or a top-level ``models`` list)."""
    payload = loads(body, "the model list", redact)
    items: Any = None
    if isinstance(payload, dict):
        items = payload.get("data")
        if not isinstance(items, list):
            items = payload.get("models")
    elif isinstance(payload, list):
        items = payload
    if not isinstance(items, list):
        shown = clip(redact(_json.text(payload)), 200)
        raise DecodeError(f"the model list has no 'data' array: {shown}")
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        ident = item.get("id") or item.get("name") or item.get("model")
        if not isinstance(ident, str):
            continue
        owner = item.get("owned_by")
        created = item.get("created")
        out.append(
            ModelInfo(
                id=ident,
                owned_by=owner if isinstance(owner, str) else None,
                created=created if isinstance(created, int) else None,
                raw=item,
            )
        )
    return out

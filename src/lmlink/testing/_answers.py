"""Stand-in answers that fit the question, for ``python -m lmlink.testing`` and the demo.

No model is involved: a request with a JSON schema gets a JSON value of that shape, whose
enum fields (a classify label) are chosen by keywords in the text and whose numbers are
the first ones in it; any other request gets the canned reply. Canned, but well formed,
so ``lmlink classify``, ``lmlink extract`` and ``lmlink chat --json`` all work offline.

Example::

    server = FakeServer(responder=sensible_reply)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._http import RecordedRequest
from ._replies import CANNED_REPLY, Reply

__all__ = ["KEYWORDS", "keyword_label", "sensible_reply", "shaped_value"]

#: The labels the demo's tickets use, each with the words that pick it.
KEYWORDS = {
    "billing": "charge|bill|refund|invoice|price|payment|paypal|subscription|discount|promo|"
    "receipt|credit card",
    "account_access": "log in|login page|password|locked|verification|two-factor|sign in|"
    "hacked|session|email address|delete my account|can't log|can't get in|two admins",
    "shipping": "ship|deliver|tracking|package|parcel|box|customs|in stock|return label|"
    "adapter|neighbour|i ordered",
    "feature_request": "would be great|please add|could you add|can you add|feature|"
    "suggestion|wish|would love|could the|nice to|request:|any plans|let us|let admins|"
    "appreciated",
    "bug": "crash|error|offline|stopped|freezes|stuck|wrong|late|unreadable|blank|blinks|"
    "not responding|itself|only shows|thinks i'm away|shows",
}

# What "any JSON object" gets: the canned reply, as an object.
_ANY_OBJECT = {"type": "object", "properties": {"answer": {"const": CANNED_REPLY}}}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_MAX_DEPTH = 8


def keyword_label(text: str, labels: Sequence[str] | None = None) -> str:
    """The first of ``labels`` whose keywords (or whose own name) appear in ``text``;
    ``other`` (or the last label) if none does.

    >>> keyword_label("I was charged twice", ["billing", "bug", "other"])
    'billing'
    """
    names = list(labels) if labels else [*KEYWORDS, "other"]
    lowered = text.lower()
    # The keyword table's order decides between labels whose words both appear.
    ordered = [k for k in KEYWORDS if k in names] + [n for n in names if n not in KEYWORDS]
    for label in ordered:
        words = KEYWORDS.get(label, label.lower().replace("_", " "))
        if any(word and word in lowered for word in words.split("|")):
            return label
    return "other" if "other" in names else names[-1]


def shaped_value(schema: Any, text: str, depth: int = 0) -> Any:
    """A JSON value that matches ``schema`` (the common keywords), filled from ``text``.

    >>> shaped_value({"type": "object", "properties": {"n": {"type": "integer"}}}, "42 apples")
    {'n': 42}
    """
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        strings = [v for v in enum if isinstance(v, str)]
        return keyword_label(text, strings) if strings else enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return shaped_value(options[0], text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        return {str(name): shaped_value(sub, text, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        least = schema.get("minItems")
        count = least if isinstance(least, int) and 0 < least <= 16 else 1
        return [shaped_value(schema.get("items"), text, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        found = _NUMBER.search(text)
        number = float(found.group()) if found else 0.0
        return int(number) if kind == "integer" else number
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "string" or kind is None:
        words = " ".join(text.split()[:6])
        least = schema.get("minLength")
        if isinstance(least, int) and len(words) < least:
            words = words.ljust(min(least, 1000), ".")
        return words
    return None


def _schema_of(body: Mapping[str, Any]) -> Any:
    """The JSON schema a request asks its answer to match, in any server's wrapper."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind == "json_schema":
            inner = fmt.get("json_schema")
            return inner.get("schema") if isinstance(inner, Mapping) else None
        if kind == "json_object":
            return fmt.get("schema") or _ANY_OBJECT
        if kind == "json":
            return fmt.get("value") or _ANY_OBJECT
    return None


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def sensible_reply(request: RecordedRequest) -> Reply | None:
    """A :data:`~lmlink.testing.Responder`: for a request with a JSON schema, a JSON answer
    of that shape, filled from the last message; None (the server's default) otherwise."""
    body = request.json
    if not isinstance(body, Mapping):
        return None
    schema = _schema_of(body)
    if schema is None:
        return None
    messages = body.get("messages")
    text = _text(messages[-1]) if isinstance(messages, list) and messages else ""
    value = shaped_value(schema, text or CANNED_REPLY)
    return Reply(content=json.dumps(value))

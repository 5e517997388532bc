"""Structured output: turning the model's text into a validated object.

A JSON-schema dict is checked with ``jsonschema``; a pydantic model class with pydantic.
Both are imported only when a call asks for them, so ``import lmlink`` stays light.
Reasoning has been split off already; markdown code fences around the JSON are tolerated.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from . import _json
from ._errors import ConfigurationError, StructuredOutputError, clip

__all__ = ["OutputSpec", "extract_json_text"]

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def extract_json_text(text: str) -> str:
    """The JSON inside ``text``: without a surrounding markdown code fence, or the first JSON
    object or array found among prose ("Here it is: {...} Hope that helps.")."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        return fenced.group(1).strip()
    try:
        _json.loads(stripped)
    except ValueError:
        found = _first_json_value(stripped)
        return stripped if found is None else found
    return stripped


def _first_json_value(text: str, tries: int = 32) -> str | None:
    """The first object or array that decodes, from each ``{`` or ``[`` in turn (at most
    ``tries`` starts: prose full of brackets must not cost quadratic time)."""
    import json

    decoder = json.JSONDecoder()
    start = 0
    for _ in range(tries):
        brace, bracket = text.find("{", start), text.find("[", start)
        at = min(i for i in (brace, bracket, len(text)) if i >= 0)
        if at == len(text):
            return None
        try:
            value, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            start = at + 1
            continue
        if isinstance(value, (dict, list)):
            return text[at:end]
        start = at + 1
    return None


class OutputSpec:
    """What a call's ``response_format`` asks for, and how to check the answer."""

    __slots__ = ("any_json", "model", "name", "schema")

    def __init__(
        self, schema: Mapping[str, Any] | None, model: type | None, name: str | None = None
    ) -> None:
        self.schema = schema
        self.model = model
        self.any_json = schema is None and model is None  # response_format="json"
        if schema is not None:
            _validator(schema)  # a broken schema fails before anything is sent
        title = schema.get("title") if schema is not None else None
        raw = name or (
            model.__name__ if model is not None else title if isinstance(title, str) else ""
        )
        self.name = "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)[:64] or "response"

    def wire_schema(self) -> Any:
        """The JSON schema to send to the server."""
        if self.model is not None:
            return self.model.model_json_schema()  # type: ignore[attr-defined]
        return dict(self.schema or {})

    @classmethod
    def of(cls, response_format: Any) -> OutputSpec | None:
        """The spec for a schema dict or pydantic class, or for any JSON value (``"json"``,
        ``{"type": "json_object"}``); None for ``None`` and plain text."""
        if response_format is None:
            return None
        if isinstance(response_format, str):
            return cls(None, None) if response_format in ("json", "json_object") else None
        if isinstance(response_format, Mapping):
            kind = response_format.get("type")
            if kind == "json_schema":
                inner = response_format.get("json_schema")
                if isinstance(inner, Mapping) and isinstance(inner.get("schema"), Mapping):
                    name = inner.get("name")
                    return cls(inner["schema"], None, name if isinstance(name, str) else None)
                return None
            # llama.cpp / llama-cpp-python's {"type": "json_object", "schema": {...}} and
            # TGI's {"type": "json", "value": {...}} carry a schema too.
            carried = response_format.get("schema" if kind == "json_object" else "value")
            if kind in ("json_object", "json") and isinstance(carried, Mapping):
                return cls(carried, None)
            if kind == "json_object":
                return cls(None, None)
            if kind in ("text", "json", "regex"):
                return None
            return cls(response_format, None)
        if isinstance(response_format, type) and hasattr(response_format, "model_validate_json"):
            return cls(None, response_format)
        return None

    def parse(self, text: str) -> Any:
        """The validated object, or StructuredOutputError with the text and the reasons."""
        candidate = extract_json_text(text)
        if self.model is not None:
            return self._parse_model(text, candidate)
        try:
            value = _json.loads_exact(candidate)
        except ValueError as exc:
            raise _failure(text, f"not valid JSON: {exc}") from exc
        if isinstance(value, (dict, list)):
            try:  # reading goes 1024 levels deep, writing only 254: a value must round-trip
                _json.dumps(value)
            except TypeError as exc:
                raise _failure(text, f"the JSON cannot be written back: {exc}") from exc
        if self.schema is not None:
            problems = _schema_problems(self.schema, value)
            if problems:
                raise _failure(text, "; ".join(problems))
        return value

    def _parse_model(self, text: str, candidate: str) -> Any:
        assert self.model is not None
        try:
            from pydantic import ValidationError
        except ImportError as exc:  # pragma: no cover - pydantic classes imply pydantic
            raise ConfigurationError("pydantic is needed: pip install 'lmlink[pydantic]'") from exc
        try:
            return self.model.model_validate_json(candidate)  # type: ignore[attr-defined]
        except ValidationError as exc:
            errors = [
                f"{'.'.join(str(p) for p in e.get('loc', ())) or '(root)'}: {e.get('msg')}"
                for e in exc.errors()
            ]
            raise _failure(text, "; ".join(errors)) from exc


def _validator(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` (checked), or ConfigurationError; cached, as a
    batch run sends the same schema thousands of times."""
    try:
        key = _json.sorted_dumps(schema)
    except TypeError as exc:
        raise ConfigurationError(f"response_format is not a JSON schema: {exc}") from exc
    return _validator_for(key)


@functools.lru_cache(maxsize=64)
def _validator_for(key: bytes) -> Any:
    import jsonschema

    schema = _json.loads(key)
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise ConfigurationError(
            f"response_format is not a valid JSON schema: {exc.message}"
        ) from exc
    return validator_cls(schema)


def _schema_problems(schema: Mapping[str, Any], value: Any) -> list[str]:
    errors = sorted(_validator(schema).iter_errors(value), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def _failure(text: str, reason: str) -> StructuredOutputError:
    return StructuredOutputError(
        f"the model's output does not match the requested schema: {clip(reason, 300)}",
        raw=text,
        errors=[reason],
    )

"""Tools: Python functions as OpenAI tool definitions, and running the calls a model makes.

``tool_schema(fn)`` reads the signature and docstring: the first docstring paragraph is the
description, ``name: text`` lines under an ``Args:`` heading describe parameters, and type
hints (str, int, float, bool, list[...], dict, Literal[...], Optional/``X | None``,
enums) become JSON-schema types. Parameters without a default are required.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._errors import ConfigurationError
from ._models import ToolCall

__all__ = ["ToolSet", "tool_schema"]

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    dict: {"type": "object"},
    list: {"type": "array"},
    type(None): {"type": "null"},
    Any: {},
}


def _type_schema(hint: Any) -> dict[str, Any]:
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(a) for a in args if a is not type(None)]
        if len(options) == 1 and len(args) == 2:
            return options[0]  # Optional[X]: "not given" is expressed by leaving it out
        return {"anyOf": options}
    if origin is tuple and args and Ellipsis not in args:  # tuple[int, str]: one per place
        items = [_type_schema(a) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(args), "maxItems": len(args)}
    if origin in (list, Sequence, tuple, set, frozenset):
        out: dict[str, Any] = {"type": "array"}
        if args and args[0] is not Ellipsis:
            out["items"] = _type_schema(args[0])
        return out
    if origin in (dict, Mapping):
        return {"type": "object"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if isinstance(hint, type) and hasattr(hint, "model_json_schema"):
        schema: dict[str, Any] = hint.model_json_schema()
        return schema
    return {}


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The description and per-parameter texts of a Google/NumPy-ish docstring."""
    text = inspect.cleandoc(doc)
    description = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    in_args = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower().rstrip(":") in ("args", "arguments", "parameters", "params"):
            in_args = True
            continue
        if in_args:
            if not stripped:
                continue
            if stripped.endswith(":") and " " not in stripped:
                break  # the next section (Returns:, Raises:)
            name, sep, rest = stripped.partition(":")
            name = name.split("(")[0].strip()
            if sep and name.isidentifier():
                params[name] = rest.strip()
    return description, params


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool definition for ``fn``.

    >>> def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    ...     '''The weather in a city.'''
    >>> tool_schema(get_weather)["function"]["parameters"]["required"]
    ['city']
    """
    hints = _hints(fn)
    description, param_docs = _doc_parts(_unwrap(fn).__doc__ or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _type_schema(hints.get(name, Any))
        if name in param_docs:
            schema["description"] = param_docs[name]
        properties[name] = schema
        if param.default is param.empty:
            required.append(name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    defs: dict[str, Any] = {}
    _lift_defs(properties, defs)
    if defs:  # a pydantic model's "#/$defs/..." references resolve from the root
        parameters["$defs"] = defs
    function: dict[str, Any] = {"name": tool_name(fn), "parameters": parameters}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def _unwrap(fn: Callable[..., Any]) -> Any:
    """What holds the signature's names, hints and docstring: a partial's function, a
    callable object's ``__call__``."""
    if isinstance(fn, functools.partial):
        return _unwrap(fn.func)
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    return type(fn).__call__  # a callable object: its method has the signature


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(_unwrap(fn))
    except (NameError, TypeError, AttributeError):
        return {}


def tool_name(fn: Callable[..., Any]) -> str:
    """The tool's name for the model: the function's (OpenAI allows ``[A-Za-z0-9_-]{1,64}``)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__name__", None) or type(target).__name__
    if name == "<lambda>":
        raise ConfigurationError("a lambda cannot be a tool: give it a name with def")
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]


def _lift_defs(node: Any, into: dict[str, Any]) -> None:
    """Move every ``$defs`` under ``node`` into ``into``."""
    if isinstance(node, dict):
        found = node.pop("$defs", None)
        if isinstance(found, dict):
            into.update(found)
        for value in node.values():
            _lift_defs(value, into)
    elif isinstance(node, list):
        for value in node:
            _lift_defs(value, into)


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How to turn a JSON argument into ``hint``'s type, where JSON is not the type itself:
    an Enum member, a pydantic model (Optional of either too)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _converter(options[0]) if len(options) == 1 else None
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    validate = getattr(hint, "model_validate", None)
    if isinstance(hint, type) and callable(validate):
        return validate  # type: ignore[no-any-return]
    return None


class ToolSet:
    """The tools of one call: their wire definitions, and the Python functions to run."""

    __slots__ = ("converters", "definitions", "functions")

    def __init__(self, tools: Sequence[Callable[..., Any] | Mapping[str, Any]]) -> None:
        self.definitions: list[dict[str, Any]] = []
        self.functions: dict[str, Callable[..., Any]] = {}
        self.converters: dict[str, dict[str, Callable[[Any], Any]]] = {}
        for tool in tools:
            if isinstance(tool, Mapping):
                self.definitions.append(dict(tool))
            elif callable(tool):
                self.definitions.append(tool_schema(tool))
                name = tool_name(tool)
                self.functions[name] = tool
                found = {p: _converter(h) for p, h in _hints(tool).items() if p != "return"}
                self.converters[name] = {p: c for p, c in found.items() if c is not None}
            else:
                raise ConfigurationError(
                    f"a tool must be an OpenAI tool dict or a function, not {type(tool).__name__}"
                )

    def prepare(self, call: ToolCall) -> tuple[Callable[..., Any], dict[str, Any]] | str:
        """The function and keyword arguments for ``call``, or an error text for the model."""
        fn = self.functions.get(call.name)
        if fn is None:
            return f"error: there is no tool named {call.name!r}"
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as exc:
            return f"error: the arguments are not valid JSON ({exc})"
        if not isinstance(args, dict):
            return "error: the arguments must be a JSON object"
        for param, convert in self.converters.get(call.name, {}).items():
            if param in args:
                try:
                    args[param] = convert(args[param])
                except Exception as exc:  # reported to the model, which can fix its call
                    return f"error: argument {param!r} is not valid: {exc}"
        return fn, args

    @staticmethod
    def result_message(call: ToolCall, result: Any) -> dict[str, Any]:
        """The ``tool`` message that reports ``result`` back to the model."""
        if isinstance(result, str):
            text = result
        else:
            try:
                text = json.dumps(result, default=str)
            except (TypeError, ValueError):
                text = str(result)
        return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": text}

"""JSON through orjson, imported on the first call.

orjson imports datetime, uuid, dataclasses and json to recognise their types: about a third
of what ``import lmlink`` would cost. The first call of :func:`loads` or :func:`dumps`
imports it and puts orjson's own functions in their place, so later calls through this
module (``_json.loads(...)``) cost one attribute lookup more than calling orjson directly.
orjson's decode error is a ``ValueError`` and its encode error a ``TypeError``: callers
catch those.
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_str", "dumps", "loads", "sorted_dumps", "text"]


def _bind() -> Any:
    import orjson

    globals().update(loads=orjson.loads, dumps=orjson.dumps)
    return orjson


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON (raises ValueError)."""
    return _bind().loads(data)


def dumps(obj: Any) -> bytes:
    """Serialise to compact JSON bytes (raises TypeError)."""
    return _bind().dumps(obj)  # type: ignore[no-any-return]


def text(obj: Any) -> str:
    """``obj`` as JSON text, for messages and re-encoded fragments: never raises (orjson
    refuses nesting past 254 levels, which a hostile server can send)."""
    try:
        return dumps(obj).decode("utf-8", "replace")
    except (TypeError, RecursionError):
        return "(a JSON value nested too deep to show)"


def as_str(value: Any) -> str:
    """A server value as a string: strings as they are, anything else as JSON text (``str()``
    or ``repr()`` of a value nested 1000 levels deep raises RecursionError)."""
    return value if isinstance(value, str) else text(value)


def sorted_dumps(obj: Any) -> bytes:
    """JSON with sorted keys: a canonical form, for cache keys."""
    orjson = _bind()
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)  # type: ignore[no-any-return]

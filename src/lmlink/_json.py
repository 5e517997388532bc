"""JSON through orjson, imported on the first call.

orjson imports datetime, uuid, dataclasses and json to recognise their types: about a third
of what ``import lmlink`` would cost. The first call of :func:`loads` or :func:`dumps`
imports it and puts orjson's own functions in their place, so later calls through this
module (``_json.loads(...)``) cost one attribute lookup more than calling orjson directly.
orjson's decode error is a ``ValueError`` and its encode error a ``TypeError``: callers
catch those.
"""

from __future__ import annotations

import re
from typing import Any

# 19 digits in a row can be past 2**63: where orjson's integers become floats.
_LONG_DIGITS = re.compile(r"\d{19}")

__all__ = ["as_str", "dumps", "dumps_record", "loads", "loads_exact", "sorted_dumps", "text"]


def _bind() -> Any:
    import orjson

    def dumps(obj: Any, _dumps: Any = orjson.dumps) -> bytes:
        try:
            return _dumps(obj)  # type: ignore[no-any-return]
        except TypeError as exc:
            return _exact(obj, exc)

    globals().update(loads=orjson.loads, dumps=dumps)
    return orjson


def _exact(obj: Any, exc: TypeError) -> bytes:
    """orjson writes no integer past 64 bits; the standard library does (exactly)."""
    if "64-bit" not in str(exc):
        raise exc
    import json

    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON (raises ValueError). Integers past 64 bits come back as floats: use
    :func:`loads_exact` where they must stay exact."""
    return _bind().loads(data)


def loads_exact(data: str | bytes) -> Any:
    """Parse JSON keeping every integer exact (raises ValueError): orjson first, the
    standard library when the text holds an integer too long for 64 bits."""
    value = loads(data)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if _LONG_DIGITS.search(text) is None:
        return value
    import json

    return json.loads(text)


def dumps_record(obj: Any) -> bytes:
    """A batch record as compact JSON: values JSON cannot hold as their text (``str``),
    integer keys as strings, integers past 64 bits exactly."""
    orjson = _bind()
    try:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)  # type: ignore[no-any-return]
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
        import json

        text = json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))
        return text.encode()


def dumps(obj: Any) -> bytes:
    """Serialise to compact JSON bytes (raises TypeError); integers past 64 bits are
    written exactly."""
    _bind()
    return dumps(obj)


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

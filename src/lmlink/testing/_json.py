"""JSON helpers: orjson when it is installed (it is fast), the stdlib otherwise.

>>> dumps({"a": [1, None]})
b'{"a":[1,null]}'
>>> loads(b'{"a": 1}')
{'a': 1}
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is an optional speed-up here
    orjson = None  # type: ignore[assignment]

__all__ = ["dumps", "dumps_spaced", "loads"]


def dumps(obj: Any) -> bytes:
    """Serialise compactly (``{"a":1}``), keeping key order. Example: ``dumps({"a": 1})``."""
    if orjson is not None:
        return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_spaced(obj: Any) -> bytes:
    """Serialise the way Python's ``json.dumps`` does (``{"a": 1}``), as mlx-lm and vLLM errors do.

    >>> dumps_spaced({"a": 1})
    b'{"a": 1}'
    """
    return json.dumps(obj).encode()


def loads(data: bytes) -> Any:
    """Parse JSON bytes; raises ``ValueError`` on bad input. Example: ``loads(b"[1]") == [1]``."""
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)

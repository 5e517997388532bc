"""The header record: the first line of every batch output, saying it is lmlink's and with
which settings its answers were made. Pure: bytes and dicts in, decisions out.

The header is one JSON object without an ``"id"`` key, so no reader can take it for a
result::

    {"lmlink": "batch-output", "format": 1, "settings": {"task": "classify",
     "labels": ["billing", "bug"], "schema": {...}, "instructions": "...",
     "template": null, "system": null, "model": "qwen3:8b", "params": {"temperature": 0}}}

``settings`` holds what shapes an answer: the task, its labels or schema and its prompt,
the template, the system message, the model and the sampling parameters (the endpoint is
not a setting: the same model behind another address gives the same answers). Keys may be
added later (a shard, say); a key one side lacks counts as null, so an older header still
compares equal when the new key is unset.

A resume whose settings differ from the header's is refused with one line naming what
changed (:func:`describe_changes`), unless it is asked for explicitly.

An embeddings output (``lmlink embed``) has the same header with ``"lmlink":
"embed-output"``: each command refuses the other's files, whatever the settings, and an
older lmlink, which knows only ``batch-output``, refuses it as foreign.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

__all__ = [
    "BATCH_OUTPUT",
    "EMBED_OUTPUT",
    "FORMAT",
    "HEADER_START",
    "HEADER_STARTS",
    "describe_changes",
    "header_kind",
    "header_line",
    "is_header",
    "is_result_shaped",
    "make_settings",
]

FORMAT = 1
#: The kinds of output: chat answers (``lmlink batch`` and its presets), and embeddings.
BATCH_OUTPUT = "batch-output"
EMBED_OUTPUT = "embed-output"
_KINDS = (BATCH_OUTPUT, EMBED_OUTPUT)
#: How every header line starts (orjson keeps the key order): a torn header is a prefix.
HEADER_START = b'{"lmlink":"batch-output"'
HEADER_STARTS = tuple(b'{"lmlink":"%s"' % kind.encode() for kind in _KINDS)

# The order changes are named in; a change of an earlier key explains the later ones it
# implies (new labels are a new schema and new instructions).
_ORDER = ("task", "labels", "schema", "instructions", "template", "system", "model", "params")
_IMPLIED = {"labels": ("schema", "instructions"), "schema": ("instructions",)}


def _json(value: Any) -> Any:
    """``value`` as plain JSON: a pydantic model class stands for its JSON schema."""

    def fallback(obj: Any) -> Any:
        schema = getattr(obj, "model_json_schema", None)
        return schema() if isinstance(obj, type) and callable(schema) else str(obj)

    return orjson.loads(orjson.dumps(value, default=fallback, option=orjson.OPT_NON_STR_KEYS))


def make_settings(
    *,
    task: str,
    instructions: str | None,
    template: str | None,
    system: str | None,
    model: str | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The settings record of a run. ``params`` are the request parameters of every item
    (the task's ``response_format`` included); the labels of a classify task are read from
    its schema.

    >>> make_settings(task="batch", instructions=None, template=None, system=None,
    ...               model="qwen3:8b", params={"temperature": 0})["params"]
    {'temperature': 0}
    """
    schema = _json(params.get("response_format"))
    labels = None
    if task == "classify" and isinstance(schema, dict):
        enum = schema.get("properties", {}).get("label", {}).get("enum")
        labels = enum if isinstance(enum, list) else None
    rest = {k: params[k] for k in sorted(params) if k != "response_format"}
    return {
        "task": task,
        "labels": labels,
        "schema": schema,
        "instructions": instructions,
        "template": template,
        "system": system,
        "model": model,
        "params": _json(rest),
    }


def header_line(settings: Mapping[str, Any], kind: str = BATCH_OUTPUT) -> bytes:
    """The header record as one line, newline included."""
    from lmlink._version import __version__

    record = {"lmlink": kind, "format": FORMAT, "version": __version__, "settings": settings}
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def is_header(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a decoded line is an lmlink header (of any format and kind)."""
    return isinstance(value, dict) and value.get("lmlink") in _KINDS and "id" not in value


def header_kind(header: Mapping[str, Any] | None) -> str | None:
    """The kind of output a header starts (``BATCH_OUTPUT`` or ``EMBED_OUTPUT``)."""
    if header is None:
        return None
    kind = header.get("lmlink")
    return kind if isinstance(kind, str) else None


def is_result_shaped(record: Mapping[str, Any]) -> bool:
    """Whether a record with a string id looks like a result line of any lmlink version:
    an error object, or an answer's ``content`` and ``finish_reason``. An input row
    (``{"id", "prompt"}``) does not."""
    error = record.get("error")
    if isinstance(error, dict):
        return True
    return "content" in record and "finish_reason" in record


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ",".join(value)
    text = " ".join(text.split())
    return repr(text if len(text) <= 40 else text[:37] + "...")


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two settings records, for people; empty when they match.

    >>> describe_changes({"labels": ["a", "b"]}, {"labels": ["a", "c"]})
    ["labels 'a,b' -> 'a,c'"]
    """
    keys = [k for k in _ORDER if k in old or k in new]
    keys += sorted((set(old) | set(new)) - set(_ORDER))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if "task" in changed:
        changed = ["task"]
    for key, implied in _IMPLIED.items():
        if key in changed:
            changed = [k for k in changed if k not in implied]
    out: list[str] = []
    for key in changed:
        before, after = old.get(key), new.get(key)
        if key == "params" and isinstance(before, dict) and isinstance(after, dict):
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    out.append(f"{name} {_show(before.get(name))} -> {_show(after.get(name))}")
        elif key == "schema":
            out.append("the schema")
        elif key == "instructions":
            out.append("the task's instructions")
        else:
            out.append(f"{key} {_show(before)} -> {_show(after)}")
    return out

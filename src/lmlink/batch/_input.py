"""Reading batch input, pure: JSONL or CSV rows in, validated :class:`BatchItem` out.

Every problem in the input is collected, with its line number, before anything is sent:
a batch that would stop at item 40 000 on a typo in item 39 999 is worse than one that
refuses to start. Rows become chat messages in one of three ways:

- ``{"id": "a1", "prompt": "..."}`` (a task may read ``text`` as well),
- ``{"id": "a1", "messages": [{"role": "user", "content": "..."}]}``,
- any fields, rendered through a template: ``"Summarise: {text}"`` (``str.format`` syntax,
  named fields only).

A few request parameters may be given per row (``max_tokens``, ``temperature``, ...; see
:data:`ITEM_OPTIONS`); other fields are data for the template and are otherwise ignored.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlink._errors import ConfigurationError

__all__ = [
    "ITEM_OPTIONS",
    "BatchInputError",
    "BatchItem",
    "ItemFormat",
    "Problem",
    "item_of",
    "items_from_rows",
    "read_items",
    "template_fields",
]

_MAX_PROBLEMS_IN_MESSAGE = 20


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One unit of work: the chat ``messages`` for ``id``, and its own request ``options``.

    >>> BatchItem("t1", [{"role": "user", "content": "Hi"}], {"max_tokens": 5})
    """

    id: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with the input, and where (``line`` 0: the input as a whole)."""

    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}" if self.line else self.message


class BatchInputError(ConfigurationError):
    """The batch input has problems; nothing was sent. ``problems`` lists every one.

    >>> try:
    ...     lmlink.run_batch("in.jsonl", "out.jsonl")
    ... except lmlink.batch.BatchInputError as exc:
    ...     for problem in exc.problems:
    ...         print(problem)          # "line 7: duplicate id 'a3' (first on line 2)"
    """

    problems: list[Problem]
    source: str = ""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message, **attrs)

    @classmethod
    def of(cls, source: str, problems: list[Problem]) -> BatchInputError:
        """The error for ``problems`` found in ``source``."""
        shown = [f"  {p}" for p in problems[:_MAX_PROBLEMS_IN_MESSAGE]]
        if len(problems) > len(shown):
            shown.append(f"  ... and {len(problems) - len(shown)} more")
        noun = "problem" if len(problems) == 1 else "problems"
        head = f"{source}: {len(problems)} {noun} in the input, nothing was sent:"
        return cls("\n".join([head, *shown]), problems=problems, source=source)

    def __reduce__(self) -> tuple[Any, ...]:
        # Not in _errors' registry, so it rebuilds itself.
        return (_rebuild_input_error, (self.message, self.problems, self.source))


def _rebuild_input_error(message: str, problems: list[Problem], source: str) -> BatchInputError:
    return BatchInputError(message, problems=problems, source=source)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _stop(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


#: Request parameters a row may set for itself, with the check its value must pass.
ITEM_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "max_tokens": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "temperature": (_number, "a number"),
    "top_p": (_number, "a number"),
    "top_k": (_int, "an integer"),
    "min_p": (_number, "a number"),
    "seed": (_int, "an integer"),
    "stop": (_stop, "a string or a list of strings"),
    "presence_penalty": (_number, "a number"),
    "frequency_penalty": (_number, "a number"),
    "response_format": (lambda v: v == "json" or isinstance(v, dict), '"json" or a JSON schema'),
}


@dataclass(frozen=True, slots=True)
class ItemFormat:
    """How rows become messages.

    ``template`` renders the user message from the row's fields; without one, the first of
    ``text_fields`` present is the user message, or ``messages`` if ``allow_messages``.
    ``system`` is prepended as a system message. ``options``: whether a row's request
    parameters (:data:`ITEM_OPTIONS`) are read; when not, those fields are data like any other.
    """

    template: str | None = None
    system: str | None = None
    text_fields: tuple[str, ...] = ("prompt",)
    allow_messages: bool = True
    options: bool = True


def _split_field(name: str) -> tuple[str, bool]:
    """A format field's root name, and whether it reads an attribute (``.x``) anywhere
    after it; an index (``[key]``) runs to its ``]`` whatever it holds, as in str.format."""
    cut = min((i for i in (name.find("."), name.find("[")) if i >= 0), default=len(name))
    root, rest = name[:cut], name[cut:]
    while rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return root, False  # malformed: str.format reports it on the row
        rest = rest[end + 1 :]
    return root, rest.startswith(".")


def template_fields(template: str) -> list[str]:
    """The top-level field names ``template`` uses; ValueError if it is malformed.

    >>> template_fields("Summarise {text} for {user[name]}")
    ['text', 'user']
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"the template is malformed: {exc}") from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root, rest = _split_field(name)
        if not root or root.isdigit():
            raise ValueError(
                "template fields must be named, like {text}; write {{ and }} for literal braces"
            )
        if rest:
            # str.format would render a Python object's repr ({text.upper}) into the prompt.
            raise ValueError(
                f"{{{name}}} reads an attribute; fields are row keys, like {{text}}, and "
                f"nested ones are indexed, like {{{root}[key]}}"
            )
        if root not in names:
            names.append(root)
    return names


def read_items(source: str | Path, fmt: ItemFormat | None = None) -> list[BatchItem]:
    """The items in a JSONL file, a CSV file (``.csv``, header row) or stdin (``"-"``, JSONL),
    as a list (a batch run reads its input row by row instead: ``scan_items``).

    Raises :class:`BatchInputError` listing every problem, with line numbers.

    >>> items = read_items("tickets.jsonl", ItemFormat(template="Classify: {text}"))
    """
    from ._source import scan_items

    source_ = scan_items(source, fmt)
    try:
        return list(source_)
    finally:
        source_.close()


def items_from_rows(
    rows: Iterable[tuple[int, Any]],
    fmt: ItemFormat | None = None,
    *,
    source: str = "items",
    unit: str = "line",
) -> list[BatchItem]:
    """Validate ``(line, row)`` pairs into items (a row that is a :class:`Problem` is
    reported as it is); raise :class:`BatchInputError` with every problem found."""
    fmt = fmt or ItemFormat()
    problems: list[Problem] = []
    fields: list[str] = []
    if fmt.template is not None:
        try:
            fields = template_fields(fmt.template)
        except ValueError as exc:
            raise BatchInputError.of(source, [Problem(0, f"--template: {exc}")]) from None
    items: list[BatchItem] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, Problem):
            problems.append(row)
            continue
        found = item_of(line, row, fmt, fields, first_line=first_line, unit=unit)
        if isinstance(found, str):
            problems.append(Problem(line, found, unit))
        else:
            items.append(found)
    if not items and not problems:
        problems.append(Problem(0, "no items: the input is empty"))
    if problems:
        raise BatchInputError.of(source, problems)
    return items


def item_of(
    line: int,
    row: Any,
    fmt: ItemFormat,
    fields: list[str],
    *,
    first_line: dict[str, int] | None = None,
    on_id: Callable[[str], object] | None = None,
    unit: str = "line",
) -> BatchItem | str:
    """The item for one row, or what is wrong with it. ``first_line`` (id to line) finds
    duplicates here; without it, ``on_id`` is called with each well-formed id instead."""
    if isinstance(row, BatchItem):
        if first_line is not None:
            if row.id in first_line:
                return f"duplicate id {row.id!r} (first on {unit} {first_line[row.id]})"
            first_line[row.id] = line
        elif on_id is not None:
            on_id(row.id)
        return row
    if not isinstance(row, Mapping):
        return f"expected a JSON object, got {_kind(row)}"
    raw_id = row.get("id")
    if raw_id is None:
        return 'no "id"'
    if not isinstance(raw_id, str):
        return f'"id" must be a string, not {_kind(raw_id)} (write "id": "{raw_id}")'
    if not raw_id.strip():
        return '"id" is empty'
    if first_line is not None:
        if raw_id in first_line:
            return f"duplicate id {raw_id!r} (first on {unit} {first_line[raw_id]})"
        first_line[raw_id] = line
    elif on_id is not None:
        on_id(raw_id)
    options: dict[str, Any] = {}
    for key, (check, wanted) in ITEM_OPTIONS.items() if fmt.options else ():
        if key in row and row[key] is not None:
            if not check(row[key]):
                return f'"{key}" must be {wanted}, not {_kind(row[key])}'
            options[key] = row[key]
    messages = _messages(row, fmt, fields)
    if isinstance(messages, str):
        return messages
    return BatchItem(raw_id, messages, options, line)


def _messages(row: Mapping[str, Any], fmt: ItemFormat, fields: list[str]) -> list[Any] | str:
    system = [{"role": "system", "content": fmt.system}] if fmt.system else []
    if fmt.template is not None:
        missing = [f for f in fields if row.get(f) is None]
        if missing:
            names = ", ".join(repr(f) for f in missing)
            return f"the template needs field {names}, which this row does not have"
        values = {k: v for k, v in row.items() if isinstance(k, str)}
        try:
            text = fmt.template.format_map(values)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            return f"cannot render the template: {type(exc).__name__}: {exc}"
        return [*system, {"role": "user", "content": text}]
    for name in fmt.text_fields:
        if name in row:
            text = row[name]
            if not isinstance(text, str):
                return f'"{name}" must be a string, not {_kind(text)}'
            if fmt.allow_messages and "messages" in row:
                return f'give "{name}" or "messages", not both'
            return [*system, {"role": "user", "content": text}]
    if fmt.allow_messages and "messages" in row:
        given = row["messages"]
        if not isinstance(given, list) or not given:
            return '"messages" must be a non-empty list of {"role": ..., "content": ...}'
        for n, message in enumerate(given, 1):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return f'"messages" item {n} must be an object with a "role"'
        starts_with_system = given[0].get("role") == "system"
        return [*([] if starts_with_system else system), *given]
    wanted = " or ".join(f'"{n}"' for n in fmt.text_fields)
    if fmt.allow_messages:
        wanted += ' or "messages"'
    return f"nothing to send: give {wanted}, or use a template"


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"a {type(value).__name__}"

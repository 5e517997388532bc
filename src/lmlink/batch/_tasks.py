"""Task presets over the batch runner: classify, summarize, extract.

A :class:`Task` is a system prompt, request parameters (a JSON schema for the answer) and
how rows give their text; the runner stays the same. Each preset reads the item's text from
a ``text`` or ``prompt`` field, or from a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmlink._errors import ConfigurationError

from ._input import ItemFormat

__all__ = ["Task", "extract_instructions", "same_extract_question"]

_TEXT_FIELDS = ("text", "prompt")


@dataclass(frozen=True)
class Task:
    """What to ask of every item, beyond its own text.

    >>> lmlink.run_batch("tickets.jsonl", "labels.jsonl",
    ...                  task=lmlink.batch.Task.classify(["billing", "bug", "other"]))
    """

    name: str = "batch"
    instructions: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    text_fields: tuple[str, ...] = ("prompt",)
    allow_messages: bool = True
    adds_label: bool = False
    reads_options: bool = True

    @classmethod
    def classify(cls, labels: Sequence[str]) -> Task:
        """Pick one of ``labels`` for each text; the result line gains ``"label"``.

        The answer is constrained by the JSON schema
        ``{"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"]}``.
        """
        names = [str(label).strip() for label in labels]
        if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigurationError(
                f"classify needs at least two distinct, non-empty labels, not {list(labels)!r}"
            )
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": names}},
            "required": ["label"],
        }
        instructions = (
            "You are a text classifier. Read the text and choose the one label that fits it "
            f"best from this list: {', '.join(names)}.\n"
            'Answer with only a JSON object of the form {"label": "<label>"}.'
        )
        return cls(
            "classify",
            instructions,
            {"response_format": schema},
            _TEXT_FIELDS,
            allow_messages=False,
            adds_label=True,
        )

    @classmethod
    def summarize(cls, max_words: int = 50) -> Task:
        """Summarise each text in at most ``max_words`` words; the summary is ``content``."""
        if max_words < 1:
            raise ConfigurationError(f"max_words must be at least 1, not {max_words}")
        instructions = (
            f"Summarise the text in at most {max_words} words. Answer with the summary only, "
            "without a preamble."
        )
        return cls("summarize", instructions, {}, _TEXT_FIELDS, allow_messages=False)

    @classmethod
    def extract(cls, schema: Mapping[str, Any]) -> Task:
        """Pull the fields of the JSON ``schema`` out of each text; the object is ``parsed``."""
        if not isinstance(schema, Mapping):
            raise ConfigurationError("extract needs a JSON schema object")
        return cls(
            "extract",
            extract_instructions(schema),
            {"response_format": dict(schema)},
            _TEXT_FIELDS,
            allow_messages=False,
        )

    def item_format(self, template: str | None = None, system: str | None = None) -> ItemFormat:
        """How rows become messages for this task; ``system`` is added after the task's own
        instructions."""
        parts = [p for p in (self.instructions, system) if p]
        return ItemFormat(
            template=template,
            system="\n\n".join(parts) or None,
            text_fields=self.text_fields,
            allow_messages=self.allow_messages,
            options=self.reads_options,
        )

    def extra_fields(self, parsed: Any) -> dict[str, Any]:
        """Fields this task adds to a result line."""
        if not self.adds_label:
            return {}
        label = parsed.get("label") if isinstance(parsed, Mapping) else None
        return {"label": label}


def extract_instructions(schema: Mapping[str, Any]) -> str:
    """The instructions :meth:`Task.extract` gives for ``schema`` (shown in its own key
    order, which the user may have chosen for the model)."""
    shown = orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode()
    return (
        "Extract the information from the text. Answer with only a JSON object that "
        f"matches this JSON schema:\n{shown}"
    )


def same_extract_question(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two settings records (see :mod:`lmlink.batch._header`) ask the same extract
    question with instructions that differ only in the key order of the schema they show.
    The schemas compare as values, so ``{"a", "b"}`` and ``{"b", "a"}`` are one schema; the
    instructions must each be the preset's own rendering of their schema."""
    if not (old.get("task") == new.get("task") == "extract"):
        return False
    schema = old.get("schema")
    if not isinstance(schema, Mapping) or schema != new.get("schema"):
        return False
    other = new.get("schema")
    assert isinstance(other, Mapping)
    return old.get("instructions") == extract_instructions(schema) and new.get(
        "instructions"
    ) == extract_instructions(other)

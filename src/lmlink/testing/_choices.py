"""Several choices (``n``) and token log-probabilities (``logprobs``, ``top_logprobs``) for
the fake server, laid over an answer already rendered as choice 0.

Pure. Every choice says choice 0's text; choices differ in their log-probabilities, which are
deterministic: token ``k`` of choice ``c`` has ``-(0.05 + 0.1 * (k % 10) + 0.01 * c)``, and its
``j``-th alternative (``top_logprobs``) is the token itself for ``j = 0``, else ``"alt{j}"``
with half of the probability the ones before it left (:func:`alternative_logprob`), so the
listed probabilities add up to less than 1 and fall in order, as a real model's do.
Tokens are the text's words with their trailing whitespace.
A stream sends each chunk once per choice, choice by choice, each carrying its ``index``,
as vLLM does.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "alternative_logprob",
    "expand_chunks",
    "expand_completion",
    "sampling",
    "token_logprob",
]

JSON = dict[str, Any]
_TOKENS = re.compile(r"\s*\S+\s*|\s+")
_MAX_N = 16
_MAX_TOP = 20


def sampling(request: Mapping[str, Any]) -> tuple[int, int | None]:
    """``(n, top)`` asked for: ``top`` is None without ``logprobs``, else how many
    alternatives each token lists. Out-of-range values are clamped."""
    n = request.get("n")
    n = min(n, _MAX_N) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    if request.get("logprobs") is not True:
        return n, None
    top = request.get("top_logprobs")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        top = 0
    return n, min(top, _MAX_TOP)


def token_logprob(k: int, choice: int) -> float:
    """The log-probability of token ``k`` of choice ``choice``."""
    return -round(0.05 + 0.1 * (k % 10) + 0.01 * choice, 4)


def alternative_logprob(logprob: float, j: int) -> float:
    """The log-probability of alternative ``j >= 1`` of a token whose own is ``logprob``:
    ``(1 - p) / 2**j`` of the probability, where ``p`` is the token's."""
    return round(math.log((1.0 - math.exp(logprob)) / 2**j), 4)


def _entries(text: str, start: int, choice: int, top: int) -> list[JSON]:
    out: list[JSON] = []
    for k, token in enumerate(_TOKENS.findall(text), start):
        logprob = token_logprob(k, choice)
        alternatives = [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())},
            *(
                {
                    "token": f"alt{j}",
                    "logprob": alternative_logprob(logprob, j),
                    "bytes": list(b"alt%d" % j),
                }
                for j in range(1, top)
            ),
        ][:top]
        out.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives,
            }
        )
    return out


def _text(choice: JSON, key: str) -> str:
    part = choice.get(key)
    content = part.get("content") if isinstance(part, dict) else None
    return content if isinstance(content, str) else ""


def expand_completion(body: JSON, n: int, top: int | None) -> JSON:
    """A plain answer's body with ``n`` choices and, when asked, their logprobs."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return body
    first = choices[0]
    out = []
    for c in range(n):
        choice = copy.deepcopy(first) if c else first
        choice["index"] = c
        if top is not None:
            choice["logprobs"] = {"content": _entries(_text(choice, "message"), 0, c, top)}
        out.append(choice)
    body["choices"] = out
    return body


def expand_chunks(chunks: list[JSON], n: int, top: int | None) -> list[JSON]:
    """A stream's chunks with each choice-carrying chunk sent once per choice (``index``
    set) and, when asked, the logprobs of the tokens each delta adds."""
    out: list[JSON] = []
    seen = 0  # tokens so far, the same for every choice (they say the same text)
    for chunk in chunks:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            out.append(chunk)
            continue
        text = _text(choices[0], "delta")
        for c in range(n):
            copied = copy.deepcopy(chunk) if c else chunk
            choice = copied["choices"][0]
            choice["index"] = c
            if top is not None and text:
                choice["logprobs"] = {"content": _entries(text, seen, c, top)}
            out.append(copied)
        seen += len(_TOKENS.findall(text))
    return out

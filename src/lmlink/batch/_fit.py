"""Whether an item's prompt can fit the model's context window, decided before it is sent.

The rule (pure, :class:`FitRule`) keeps the run cheap and never refuses an item that fits:

1. **Surely fits, no request**: a token covers at least one byte of text (byte-level BPE
   and SentencePiece with byte fallback alike), so a prompt has at most as many tokens as
   its UTF-8 bytes, plus what the chat template adds (:data:`PER_MESSAGE` per message and
   :data:`OVERHEAD` for a default system prompt and the generation prompt). When that bound
   is below the window, the item is sent as it is. This is nearly every item.
2. **Might not fit, ask the server**: the others are counted by the server's own tokenizer
   (:meth:`lmlink.AsyncClient.count_tokens`, one request each) and refused when the count
   reaches the window: then not even one answer token fits. A server that tokenizes plain
   text only (SGLang, llama-cpp-python) counts the messages' text without the template,
   which the template only adds to. A count that fails sends the item.
3. **No tokenizer** (Ollama, LM Studio...): an estimate decides, set so that it does not
   refuse an item that fits: :data:`BYTES_PER_TOKEN` bytes per token, about twice what
   English text takes and more than any common text. Below that, the item is sent and the
   server decides.

Images and other non-text parts cannot be bounded by bytes: such items are always counted
(or sent, without a tokenizer). Only the prompt is weighed, not ``max_tokens``: servers
differ there (vLLM refuses prompt plus ``max_tokens`` over the window, llama.cpp stops at
the window), and the server still answers for the rest.

:class:`FitGate` is the run's side: at most one context-length query per run, made when
the first item that could overflow comes (an item bounded under :data:`FLOOR` tokens is
sent without it), the rule, and the counts (after a server says it has no tokenizer, it is
not asked again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmlink import _json
from lmlink._errors import LMLinkError, PromptTooLongError, UnsupportedError
from lmlink._log import log

if TYPE_CHECKING:
    from lmlink import AsyncClient

__all__ = ["BYTES_PER_TOKEN", "FLOOR", "OVERHEAD", "PER_MESSAGE", "FitGate", "FitRule", "short"]

#: Tokens a chat template may add per message (role markers, separators).
PER_MESSAGE = 16
#: Tokens a template may add once (a default system prompt, the generation prompt, BOS).
OVERHEAD = 64
#: Items bounded under this many tokens are sent without asking anything: no chat model
#: worth running has a smaller window (and were one to, its own refusal is the item's
#: error line). A run of short items makes no extra request at all.
FLOOR = 512
#: The estimate without a tokenizer: refuse only when even this many bytes per token
#: cannot fit.
BYTES_PER_TOKEN = 8


def _size(messages: Sequence[Any]) -> int | None:
    """The UTF-8 bytes of the text in ``messages``, or None when a part is not text."""
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    return None
                text = part.get("text")
                total += len(text.encode()) if isinstance(text, str) else 0
        elif content is not None:
            return None
        calls = message.get("tool_calls")
        if calls:
            total += len(_json.dumps(calls))
    return total


class FitRule:
    """The decisions for a window of ``context_length`` tokens (see the module docstring).

    >>> rule = FitRule(4096)
    >>> rule.surely_fits(messages)         # True: send it, no count needed
    >>> rule.refusal(count, counted=True)  # PromptTooLongError, or None: send it
    """

    __slots__ = ("context_length",)

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    @staticmethod
    def bound(messages: Sequence[Any]) -> int | None:
        """At most this many prompt tokens; None when it cannot be bounded."""
        size = _size(messages)
        if size is None:
            return None
        return size + PER_MESSAGE * len(messages) + OVERHEAD

    def surely_fits(self, messages: Sequence[Any]) -> bool:
        bound = self.bound(messages)
        return bound is not None and bound < self.context_length

    @staticmethod
    def estimate(messages: Sequence[Any]) -> int | None:
        """A count that real text does not fall under, or None (non-text parts)."""
        size = _size(messages)
        return None if size is None else size // BYTES_PER_TOKEN

    def refusal(self, tokens: int | None, *, counted: bool) -> PromptTooLongError | None:
        """The error for a prompt of ``tokens`` tokens, or None when it may be sent."""
        if tokens is None or tokens < self.context_length:
            return None
        how = "by the server's tokenizer" if counted else "estimated, no tokenizer"
        return PromptTooLongError(
            f"not sent: the prompt has {tokens} tokens ({how}) and the model's context "
            f"window is {self.context_length}; shorten the item",
            prompt_tokens=tokens,
            context_length=self.context_length,
            counted=counted,
        )


class FitGate:
    """The run's check: :meth:`refusal` per item. The window is asked once, when the first
    item comes that it could matter for (none at all in a run of short items).

    >>> gate = FitGate(client, model)
    >>> error = await gate.refusal(item.messages)  # PromptTooLongError, or None: send it
    """

    __slots__ = ("_asked", "_client", "_lock", "_mode", "_model", "_rule")

    def __init__(self, client: AsyncClient, model: str) -> None:
        self._client = client
        self._model = model
        self._lock = asyncio.Lock()
        self._asked = False
        self._rule: FitRule | None = None
        # "chat": the server counts messages; "text": plain text only (SGLang,
        # llama-cpp-python); "none": no tokenizer, the estimate decides.
        self._mode = "chat"

    async def rule(self) -> FitRule | None:
        """The rule for the model's window; None when the server does not tell it (or
        cannot be asked: the items will say why). Asked once."""
        if not self._asked:
            async with self._lock:
                if not self._asked:
                    try:
                        window = await self._client.context_length(self._model)
                    except LMLinkError as exc:
                        log.info("lmlink: batch: context window unknown (%s)", exc)
                        window = None
                    self._rule = None if window is None else FitRule(window)
                    self._asked = True
        return self._rule

    async def refusal(self, messages: Sequence[Any]) -> PromptTooLongError | None:
        """Why the item must not be sent, or None. (The runner calls it only for items
        that are not :func:`short`.)"""
        bound = FitRule.bound(messages)
        if bound is not None and bound < FLOOR:
            return None
        rule = await self.rule()
        if rule is None or rule.surely_fits(messages):
            return None
        if self._mode == "chat":
            found = await self._count(list(messages), "text")
            if found is not None:
                return rule.refusal(found if found >= 0 else None, counted=True)
        if self._mode == "text":
            # The messages' text alone: the template only adds to it.
            text = _joined(messages)
            found = None if text is None else await self._count(text, "none")
            if found is not None:
                return rule.refusal(found if found >= 0 else None, counted=True)
        if self._mode == "none":
            return rule.refusal(rule.estimate(messages), counted=False)
        return None

    async def _count(self, what: Any, fallback: str) -> int | None:
        """The server's count; -1 when it failed (unsure: send); None when it cannot count
        this (the gate falls back to ``fallback`` for the rest of the run)."""
        try:
            return await self._client.count_tokens(what, model=self._model)
        except UnsupportedError:
            self._mode = fallback
            return None
        except LMLinkError:
            return -1


def short(messages: Sequence[Any]) -> bool:
    """True for an item surely under :data:`FLOOR` tokens, decided cheaply (ASCII text is
    one byte a character, any other at most 4): the common case costs the runner no
    coroutine and no encoding.
    False means only "look closer"."""
    left = FLOOR - OVERHEAD
    for message in messages:
        content = message.get("content") if type(message) is dict else None
        if type(content) is not str or "tool_calls" in message:
            return False
        size = len(content)
        left -= (size if content.isascii() else 4 * size) + PER_MESSAGE
        if left <= 0:
            return False
    return True


def _joined(messages: Sequence[Any]) -> str | None:
    """The text of ``messages``, one per line; None when a part is not text."""
    if _size(messages) is None:
        return None
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text") or "" for p in content)
        texts.append(content or "")
    return "\n".join(texts)

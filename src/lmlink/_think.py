"""Inline reasoning: ``<think>…</think>`` in the content, split out as it streams (pure).

Models such as DeepSeek-R1 and Qwen3 write their reasoning inline when the server has no
reasoning parser. Three cases matter:

- ``<think>reasoning</think>answer``: the tags may be split across chunks at any byte;
- the chat template already put ``<think>`` in the prompt, so the output holds only
  ``reasoning</think>answer`` (vllm#13125): everything before the first bare ``</think>``
  is reasoning. A stream cannot take back text it already handed out as content, so the
  *aggregate* (:meth:`ThinkSplitter.finish`) moves it to the reasoning;
- no tags at all: content passes straight through (the fast path).
"""

from __future__ import annotations

__all__ = ["ThinkSplitter"]

OPEN = "<think>"
CLOSE = "</think>"

_START, _THINK, _AFTER, _CONTENT = range(4)


def _partial_tag(text: str, tag: str) -> int:
    """Index where a proper prefix of ``tag`` ends ``text``, or -1."""
    i = text.rfind("<", max(0, len(text) - len(tag) + 1))
    if i >= 0 and tag.startswith(text[i:]) and len(text) - i < len(tag):
        return i
    return -1


class ThinkSplitter:
    """Feed content deltas; get back ``(content, reasoning)`` increments.

    >>> s = ThinkSplitter()
    >>> s.feed("<thi"), s.feed("nk>hmm</think>Hi")
    (('', ''), ('Hi', 'hmm'))
    >>> s.finish()
    ('Hi', 'hmm')
    """

    __slots__ = ("_closed", "_content", "_pending", "_reasoning", "_separated", "_state")

    def __init__(self) -> None:
        self._state = _START
        self._pending = ""
        self._closed = False
        self._separated = False
        self._content: list[str] = []
        self._reasoning: list[str] = []

    def separate(self) -> None:
        """The server sends the reasoning in a field of its own: a ``<think>`` block in the
        content only repeats it (llama.cpp's deepseek-legacy format) and is dropped, and a
        bare ``</think>`` later on is just text of the answer."""
        self._separated = True

    def feed(self, text: str) -> tuple[str, str]:
        """Split one delta; returns the content and reasoning it adds."""
        # The fast path: answer text, and no tag can start in this delta.
        state = self._state
        if state == _CONTENT and (
            self._closed or self._separated or ("<" not in text and not self._pending)
        ):
            if text:
                self._content.append(text)
            return text, ""
        if (
            state == _START
            and text
            and "<" not in text
            and not self._pending
            and not text.isspace()
        ):
            # The first text, with no tag in it: the answer has begun (a plain answer's
            # whole content, nearly always).
            self._state = _CONTENT
            self._content.append(text)
            return text, ""
        if self._pending:
            text = self._pending + text
            self._pending = ""
        content: list[str] = []
        reasoning: list[str] = []
        while text:
            if self._state == _START:
                stripped = text.lstrip()
                if not stripped:
                    self._pending = text  # only whitespace yet: a <think> may still come
                    break
                if stripped.startswith(OPEN):
                    self._state = _THINK
                    text = stripped[len(OPEN) :]
                    continue
                if OPEN.startswith(stripped):
                    self._pending = text
                    break
                self._state = _CONTENT
            elif self._state == _THINK:
                end = text.find(CLOSE)
                if end >= 0:
                    if not self._separated:
                        reasoning.append(text[:end])
                    text = self._after_close(text, end)
                    continue
                held = self._hold_partial_close(text)
                if not self._separated:
                    reasoning.append(held)
                break
            elif self._state == _AFTER:
                text = text.lstrip()  # the blank line models put after </think>
                if text:
                    self._state = _CONTENT
            else:
                if not self._closed and not self._separated:
                    end = text.find(CLOSE)
                    if end >= 0:
                        # A bare </think>: the opening tag was in the prompt, so all
                        # content so far was reasoning.
                        self._reasoning.extend(self._content)
                        self._content.clear()
                        self._reasoning.extend(content)
                        content.clear()
                        reasoning.append(text[:end])
                        text = self._after_close(text, end)
                        continue
                    text = self._hold_partial_close(text)
                content.append(text)
                break
        out_content = "".join(content)
        out_reasoning = "".join(reasoning)
        if out_content:
            self._content.append(out_content)
        if out_reasoning:
            self._reasoning.append(out_reasoning)
        return out_content, out_reasoning

    def _after_close(self, text: str, end: int) -> str:
        self._state, self._closed = _AFTER, True
        return text[end + len(CLOSE) :]

    def _hold_partial_close(self, text: str) -> str:
        """``text`` without a trailing prefix of ``</think>``, which is held back."""
        cut = _partial_tag(text, CLOSE)
        if cut < 0:
            return text
        self._pending = text[cut:]
        return text[:cut]

    def flush(self) -> tuple[str, str]:
        """At the end of the text: release what was held back as a possible tag."""
        held, self._pending = self._pending, ""
        if not held:
            return "", ""
        if self._state == _THINK:
            if self._separated:
                return "", ""
            self._reasoning.append(held)
            return "", held
        if self._state == _START:
            self._state = _CONTENT
        self._content.append(held)
        return held, ""

    def finish(self) -> tuple[str, str]:
        """The whole content and reasoning (after :meth:`flush`)."""
        if self._pending:
            self.flush()
        content = self._content
        text = content[0] if len(content) == 1 else "".join(content)
        return text, "".join(self._reasoning) if self._reasoning else ""

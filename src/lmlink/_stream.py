"""Streamed chat chunks folded into one response, pure.

:class:`StreamAccumulator` takes SSE events one at a time and returns the content each adds.
It keeps reasoning (three dialects), tool-call fragments (by index, or by id when a server
leaves the index out), usage, model and finish reason, and decides at the end whether the
stream finished or was cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _json
from ._errmap import error_from_payload
from ._errors import APIStatusError, StreamError, clip, stream_variant
from ._log import log
from ._models import ChatResponse, ToolCall
from ._sse import SSEEvent
from ._think import ThinkSplitter
from ._wire import finish_word, text_of

__all__ = ["StreamAccumulator"]


_DONE = b"[DONE]"


class _ToolFragments:
    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.type = "function"
        self.args: list[str] = []

    def add(self, item: dict[str, Any]) -> None:
        if self.id is None and item.get("id"):
            self.id = _json.as_str(item["id"])
        fn = item.get("function")
        if isinstance(fn, dict):
            if self.name is None and fn.get("name"):
                self.name = _json.as_str(fn["name"])
            args = fn.get("arguments")
            if isinstance(args, str):
                self.args.append(args)
            elif args is not None:
                self.args.append(_json.text(args))

    def build(self, position: int) -> ToolCall:
        return ToolCall(
            id=self.id or f"call_{position}",
            name=self.name or "",
            arguments="".join(self.args),
            type=self.type,
        )

    def complete(self) -> bool:
        if not self.name:
            return False
        text = "".join(self.args).strip()
        if not text:
            return True
        try:
            _json.loads(text)
        except ValueError:
            return False
        return True


class StreamAccumulator:
    """Feed SSE events; read the aggregate with :meth:`response`.

    ``done`` is set by ``[DONE]``; ``reasoning_delta`` is the reasoning the last event added.
    In-band errors raise a :func:`stream_variant` of their class with ``partial`` set.
    """

    __slots__ = (
        "_reasoning",
        "_think",
        "_tools",
        "done",
        "finish_raw",
        "malformed",
        "model",
        "output_seen",
        "output_tokens",
        "prompt_tokens",
        "reasoning_delta",
        "redact",
    )

    def __init__(self, redact: Callable[[str], str] = str) -> None:
        self.redact = redact
        self._think = ThinkSplitter()
        self._reasoning: list[str] = []
        self._tools: list[_ToolFragments] = []
        self.done = False
        self.finish_raw: str | None = None
        self.malformed = 0
        self.model: str | None = None
        self.output_seen = False
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None
        self.reasoning_delta = ""

    def feed(self, event: SSEEvent) -> str:
        """Fold one event in; return the content it adds (often ``""``)."""
        self.reasoning_delta = ""
        data = event.data
        if self.done:
            return ""
        if event.event == "error":
            self._raise_in_band(
                self._loads(data, quiet=True) or {"error": data.decode("utf-8", "replace")}
            )
        if data == _DONE or (len(data) < 16 and data.strip() == _DONE):
            self.done = True
            return ""
        try:
            chunk = _json.loads(data)
        except ValueError:
            self._skip(data, "not valid JSON")
            return ""
        if type(chunk) is not dict:
            if chunk is not None:
                self._skip(data, "not a JSON object")
            return ""
        if chunk.get("error"):
            self._raise_in_band(chunk)
        if self.model is None:
            model = chunk.get("model")
            if model and isinstance(model, str):
                self.model = model
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self._take_usage(usage)
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return ""
        choice = choices[0]
        if not isinstance(choice, dict):
            return ""
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            self.finish_raw = finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message")
            if not isinstance(delta, dict):
                return ""
        # Most deltas are {"content": "..."} alone: skip the rarer fields then.
        if len(delta) > 1 or "content" not in delta:
            self._take_extras(delta)
        content = delta.get("content")
        if not content:
            return ""
        if not isinstance(content, str):
            content = text_of(content)
        out, inline = self._think.feed(content)
        if inline:
            self.reasoning_delta += inline
        if out or inline:
            self.output_seen = True
        return out

    def flush(self) -> str:
        """At the end of the stream: the content held back as a possible tag (reasoning held
        back goes to ``reasoning_delta``)."""
        out, self.reasoning_delta = self._think.flush()
        return out

    def _take_extras(self, delta: dict[str, Any]) -> None:
        reasoning = (
            delta.get("reasoning_content") or delta.get("reasoning") or delta.get("thinking")
        )
        if reasoning:
            text = reasoning if isinstance(reasoning, str) else text_of(reasoning)
            self._reasoning.append(text)
            self.reasoning_delta = text
            self._think.separate()
            self.output_seen = True
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            self._take_tools(calls)

    def _loads(self, data: bytes, *, quiet: bool = False) -> Any:
        try:
            return _json.loads(data)
        except ValueError:
            if not quiet:
                self._skip(data, "not valid JSON")
            return None

    def _skip(self, data: bytes, why: str) -> None:
        self.malformed += 1
        snippet = clip(self.redact(data.decode("utf-8", "replace")), 200)
        log.warning("lmlink: skipped a stream chunk that is %s: %r", why, snippet)

    def _take_usage(self, usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        output = usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(output, int):
            self.output_tokens = output

    def _take_tools(self, calls: list[Any]) -> None:
        tools = self._tools
        for item in calls:
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            if not isinstance(index, int) or index < 0 or index > 1024:
                index = self._index_without(item)
            while len(tools) <= index:
                tools.append(_ToolFragments())
            tools[index].add(item)
            self.output_seen = True

    def _index_without(self, item: dict[str, Any]) -> int:
        """Where a fragment with no index belongs: its id's call, a new call for a new id,
        else the latest call (openai-python#2806 crashes here)."""
        ident = item.get("id")
        if ident:
            for i, frag in enumerate(self._tools):
                if frag.id == ident:
                    return i
            fn = item.get("function")
            fresh = isinstance(fn, dict) and fn.get("name")
            if fresh or not self._tools or self._tools[-1].id is not None:
                return len(self._tools)
        return max(0, len(self._tools) - 1)

    def _raise_in_band(self, payload: Any) -> None:
        err = error_from_payload(payload, redact=self.redact)
        if err is None:
            text = clip(self.redact(_json.text(payload)), 300)
            err = APIStatusError(f"in-band error: {text}", body=text)
        cls = stream_variant(type(err))
        attrs = {k: v for k, v in err.__dict__.items() if k != "message"}
        raise cls(err.message, partial=self.partial(), **attrs)

    @property
    def finished(self) -> bool:
        """A finish reason arrived, or the stream delivered complete tool calls."""
        if self.finish_raw is not None:
            return True
        return bool(self._tools) and all(t.complete() for t in self._tools)

    def response(self) -> ChatResponse:
        """The aggregate so far (the final one once the stream ended)."""
        content, inline = self._think.finish()
        reasoning = "".join(self._reasoning)
        if inline:
            reasoning += inline
        if reasoning.isspace():  # Qwen's empty "<think>\n\n</think>"
            reasoning = ""
        finish_raw = self.finish_raw
        if finish_raw is None and self._tools and self.finished:
            finish_raw = "tool_calls"
        return ChatResponse(
            content=content,
            reasoning=reasoning,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            model=self.model,
            finish_reason=finish_word(finish_raw),
            tool_calls=[t.build(i) for i, t in enumerate(self._tools)],
            finish_reason_raw=self.finish_raw,
        )

    def partial(self) -> ChatResponse:
        """The aggregate so far, for an error's ``.partial``: with the API key blanked out of
        the text, as errors get logged and pickled (a server may echo the key)."""
        out = self.response()
        redact = self.redact
        out.content = redact(out.content)
        out.reasoning = redact(out.reasoning)
        out.model = None if out.model is None else redact(out.model)
        if out.finish_reason_raw is not None:
            out.finish_reason_raw = redact(out.finish_reason_raw)
        out.tool_calls = [
            ToolCall(redact(t.id), redact(t.name), redact(t.arguments), t.type)
            for t in out.tool_calls
        ]
        return out

    def truncated_error(self, why: str) -> StreamError:
        """The error for a stream that ended without finishing."""
        partial = self.partial()
        got = len(partial.content)
        return StreamError(
            f"the stream ended before it finished ({why}; {got} characters of content "
            "arrived, kept in .partial)",
            partial=partial,
        )

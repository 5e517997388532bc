"""The one answer decoder, pure: stream chunks and plain bodies folded into a ChatResponse.

A streamed answer arrives as many chunks (``choices[0].delta``); a plain one as one body
(``choices[0].message``). :class:`AnswerDecoder` folds both with the same code: a plain body
is one chunk whose message is the only delta. So every rule exists once: reasoning fields
(``reasoning_content``, ``reasoning``, Ollama's ``thinking``) and inline ``<think>`` tags,
in-band errors (``{"error": ...}`` and vLLM's ``{"object": "error"}``), usage, tool-call
fragments (by index, by id, or by position in a whole message), finish reasons, and invalid
UTF-8 (kept as U+FFFD rather than dropped).

The per-choice state lives in :class:`ChoiceState`: choice 0 has its own (the common
answer takes no detour), further choices (``n > 1``, routed by each entry's ``index``) one
each, and token log-probabilities (``choices[i].logprobs.content``) are one more list in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import _json
from ._errmap import error_from_payload
from ._errors import APIStatusError, DecodeError, StreamError, clip, stream_variant
from ._log import log
from ._models import ChatResponse, Choice, TokenLogprob, ToolCall
from ._sse import SSEDecoder, SSEEvent
from ._think import ThinkSplitter
from ._wire import finish_word, text_of

__all__ = [
    "AnswerDecoder",
    "ChoiceState",
    "decode_answer",
    "decode_events",
    "is_event_stream",
    "loads_lenient",
]


_DONE = b"[DONE]"


def loads_lenient(data: bytes) -> Any:
    """JSON from ``data``; invalid UTF-8 inside it is read as U+FFFD (as a plain answer's
    text always was), and ``NaN``, ``Infinity`` and ``-Infinity`` as floats, instead of
    failing the whole object. Raises ValueError otherwise.

    Python servers that serialise with ``json.dumps``' defaults write ``-Infinity`` for the
    log-probability of a token constrained decoding rules out; orjson refuses it, the
    standard library reads it."""
    try:
        return _json.loads(data)
    except ValueError as exc:
        error = exc
    text = data.decode("utf-8", "replace")
    if "\ufffd" in text:
        try:
            return _json.loads(text)
        except ValueError as exc:
            error = exc
    if b"Infinity" in data or b"NaN" in data:
        import json

        try:
            return json.loads(text)
        except RecursionError:  # a hostile nesting depth: orjson's limit is far lower
            raise ValueError("the JSON is nested too deep") from None
    raise error


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
        kind = item.get("type")
        if isinstance(kind, str) and kind:
            self.type = kind
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


def _token_logprob(entry: Any) -> TokenLogprob | None:
    if not isinstance(entry, dict):
        return None
    logprob = entry.get("logprob")
    if not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
        return None
    raw = entry.get("bytes")
    data = raw if isinstance(raw, list) and all(type(b) is int for b in raw) else None
    return TokenLogprob(_json.as_str(entry.get("token", "")), float(logprob), data)


class ChoiceState:
    """What one choice has said so far: content (through the ``<think>`` splitter),
    reasoning, tool-call fragments, token log-probabilities and the finish reason."""

    __slots__ = ("finish_raw", "logprobs", "reasoning", "think", "tools")

    def __init__(self) -> None:
        self.think = ThinkSplitter()
        self.reasoning: list[str] = []
        self.tools: list[_ToolFragments] = []
        self.finish_raw: str | None = None
        self.logprobs: list[TokenLogprob] | None = None

    def take_logprobs(self, logprobs: Any) -> None:
        """Add a choice's ``logprobs`` (``{"content": [{token, logprob, bytes,
        top_logprobs}]}``); entries that are not of that shape are skipped."""
        entries = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(entries, list):
            return
        out = self.logprobs
        if out is None:
            out = self.logprobs = []
        for entry in entries:
            token = _token_logprob(entry)
            if token is None:
                continue
            top = entry.get("top_logprobs")
            if isinstance(top, list):
                token.top.extend(t for t in map(_token_logprob, top) if t is not None)
            out.append(token)

    def take_tools(self, calls: list[Any], whole: bool) -> None:
        tools = self.tools
        for position, item in enumerate(calls):
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            if whole or (position and not isinstance(index, int)):
                # A complete message, or a later entry of one delta's list: each entry of
                # a list is a call of its own.
                index = len(tools)
            elif not isinstance(index, int) or index < 0 or index > 1024:
                index = self._index_without(item)
            while len(tools) <= index:
                tools.append(_ToolFragments())
            tools[index].add(item)

    def _index_without(self, item: dict[str, Any]) -> int:
        """Where a fragment with no index belongs: its id's call, a new call for a new id,
        else the latest call (openai-python#2806 crashes here)."""
        ident = item.get("id")
        if ident:
            for i, frag in enumerate(self.tools):
                if frag.id == ident:
                    return i
            fn = item.get("function")
            fresh = isinstance(fn, dict) and fn.get("name")
            if fresh or not self.tools or self.tools[-1].id is not None:
                return len(self.tools)
        return max(0, len(self.tools) - 1)

    @property
    def finished(self) -> bool:
        """A finish reason arrived, or complete tool calls did."""
        if self.finish_raw is not None:
            return True
        return bool(self.tools) and all(t.complete() for t in self.tools)


class AnswerDecoder:
    """Feed SSE events (:meth:`feed`) or one plain body (:func:`decode_answer`); read the
    aggregate with :meth:`response`.

    ``done`` is set by ``[DONE]``; ``reasoning_delta`` is the reasoning the last event added.
    In-band errors raise (in a stream, a :func:`stream_variant` of their class with
    ``partial`` set).
    """

    __slots__ = (
        "_choice",
        "_more",
        "done",
        "events",
        "malformed",
        "model",
        "output_seen",
        "output_tokens",
        "prompt_tokens",
        "raw",
        "reasoning_delta",
        "redact",
        "stray",
    )

    def __init__(self, redact: Callable[[str], str] = str) -> None:
        self.redact = redact
        self._choice = ChoiceState()
        self._more: dict[int, ChoiceState] | None = None  # choices after the first, by index
        self.raw: Any = None  # the last JSON object of a stream; a plain answer's body
        self.done = False
        self.events = 0  # SSE events fed: none means the body was not an event stream
        self.malformed = 0
        self.model: str | None = None
        self.output_seen = False
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None
        self.reasoning_delta = ""
        # The last chunk that was no answer chunk at all (no choices, no usage): when the
        # stream ends without an answer, its error quotes it (the server's own words).
        self.stray: bytes | None = None

    # -- input ------------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> str:
        """Fold one stream event in; return the content it adds (often ``""``)."""
        self.reasoning_delta = ""
        self.events += 1
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
            chunk = _json.loads(data)  # valid JSON, nearly always: no detour through _loads
        except ValueError:
            chunk = self._loads(data)
        if type(chunk) is not dict:
            if chunk is not None:
                self._skip(data, "not a JSON object")
            return ""
        if chunk.get("error") or chunk.get("object") == "error":
            self._raise_in_band(chunk)
        self.raw = chunk
        if "choices" not in chunk and "usage" not in chunk:
            self.stray = data
        return self.fold(chunk, whole=False)

    def fold(self, chunk: dict[str, Any], *, whole: bool) -> str:
        """Fold one decoded chunk (``whole``: a plain body's, its message complete)."""
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
        if len(choices) > 1 or choice.get("index"):
            return self._fold_choices(choices, whole)
        # The common answer, choice 0 alone, is folded here without a further call.
        state = self._choice
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            state.finish_raw = finish
        logprobs = choice.get("logprobs")
        if logprobs:
            state.take_logprobs(logprobs)
        delta = choice.get("message") if whole else choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("delta" if whole else "message")
            if not isinstance(delta, dict):
                return ""
        # Most deltas are {"content": "..."} alone, most messages {"role", "content"}: skip
        # the rarer fields then.
        if len(delta) - ("content" in delta) - ("role" in delta) > 0:
            self._take_extras(delta, state, whole)
        content = delta.get("content")
        if not content:
            return ""
        if not isinstance(content, str):
            content = text_of(content)
        out, inline = state.think.feed(content)
        if inline:
            self.reasoning_delta += inline
        if out or inline:
            self.output_seen = True
        return out

    def _fold_choices(self, choices: list[Any], whole: bool) -> str:
        """Several choices, or one other than choice 0: each to its own state, by index.
        Only choice 0's content is returned (and its reasoning kept in reasoning_delta)."""
        out = ""
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                index = position
            if index == 0:
                out += self._fold_one(choice, self._choice, whole)
                continue
            if index > 1024:  # no real n is this large: a hostile index, not a choice
                continue
            more = self._more
            if more is None:
                more = self._more = {}
            state = more.get(index)
            if state is None:
                state = more[index] = ChoiceState()
            kept = self.reasoning_delta
            self._fold_one(choice, state, whole)
            self.reasoning_delta = kept
        return out

    def _fold_one(self, choice: dict[str, Any], state: ChoiceState, whole: bool) -> str:
        """Fold one choice into ``state`` by the same path as the common answer: as choice 0
        of a chunk of its own, with ``state`` standing in for choice 0's."""
        main = self._choice
        self._choice = state
        try:
            return self.fold({"choices": [{**choice, "index": 0}]}, whole=whole)
        finally:
            self._choice = main

    def flush(self) -> str:
        """At the end of the stream: choice 0's content held back as a possible tag
        (reasoning held back goes to ``reasoning_delta``)."""
        out, self.reasoning_delta = self._choice.think.flush()
        return out

    def _take_extras(self, delta: dict[str, Any], state: ChoiceState, whole: bool) -> None:
        reasoning = (
            delta.get("reasoning_content") or delta.get("reasoning") or delta.get("thinking")
        )
        if reasoning:
            text = reasoning if isinstance(reasoning, str) else text_of(reasoning)
            state.reasoning.append(text)
            self.reasoning_delta = text
            state.think.separate()
            self.output_seen = True
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            state.take_tools(calls, whole)
            self.output_seen = True

    def _loads(self, data: bytes, *, quiet: bool = False) -> Any:
        try:
            return loads_lenient(data)
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

    def _raise_in_band(self, payload: Any) -> None:
        err = error_from_payload(payload, redact=self.redact)
        if err is None:
            text = clip(self.redact(_json.text(payload)), 300)
            err = APIStatusError(f"in-band error: {text}", body=text)
        cls = stream_variant(type(err))
        attrs = {k: v for k, v in err.__dict__.items() if k != "message"}
        raise cls(err.message, partial=self.partial(), **attrs)

    # -- output -----------------------------------------------------------------------------

    @property
    def finish_raw(self) -> str | None:
        return self._choice.finish_raw

    @property
    def finished(self) -> bool:
        """A finish reason arrived, or the stream delivered complete tool calls (for every
        choice, when there are several)."""
        if self._more is None:
            return self._choice.finished
        return self._choice.finished and all(s.finished for s in self._more.values())

    def response(self) -> ChatResponse:
        """The aggregate so far (the final one once the stream ended)."""
        state = self._choice
        content, reasoning, finish_raw, tools = _settle(state)
        more = self._more
        return ChatResponse(
            content,
            reasoning,
            self.prompt_tokens,
            self.output_tokens,
            self.model,
            finish_word(finish_raw),
            tools,
            None,
            None,
            None,
            state.finish_raw,
            False,
            state.logprobs,
            self.raw,
            [_choice_of(more[i], i) for i in sorted(more)] if more else None,
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
        out.raw = None  # unredacted server JSON: not carried on an error
        for choice in out.choices[1:]:
            choice.content = redact(choice.content)
            choice.reasoning = redact(choice.reasoning)
        return out

    def truncated_error(self, why: str) -> StreamError:
        """The error for a stream that ended without finishing."""
        partial = self.partial()
        got = len(partial.content)
        said = ""
        if self.stray is not None and not self.output_seen:
            text = clip(self.redact(self.stray.decode("utf-8", "replace")), 200)
            said = f"; instead of an answer the server sent: {text}"
        return StreamError(
            f"the stream ended before it finished ({why}; {got} characters of content "
            f"arrived, kept in .partial){said}",
            partial=partial,
        )


def _settle(state: ChoiceState) -> tuple[str, str, str | None, list[ToolCall]]:
    """A choice's content, reasoning, finish reason (``tool_calls`` when complete calls
    ended it without one) and tool calls."""
    content, inline = state.think.finish()
    reasoning = "".join(state.reasoning) if state.reasoning else ""
    if inline:
        reasoning += inline
    if reasoning and reasoning.isspace():  # Qwen's empty "<think>\n\n</think>"
        reasoning = ""
    finish_raw = state.finish_raw
    tools = state.tools
    if finish_raw is None and tools and state.finished:
        finish_raw = "tool_calls"
    return (
        content,
        reasoning,
        finish_raw,
        [t.build(i) for i, t in enumerate(tools)] if tools else [],
    )


def _choice_of(state: ChoiceState, index: int) -> Choice:
    content, reasoning, finish_raw, tools = _settle(state)
    return Choice(
        index,
        content,
        reasoning,
        finish_word(finish_raw),
        tools,
        state.logprobs,
        state.finish_raw,
    )


def decode_answer(body: bytes, *, redact: Callable[[str], str] = str) -> ChatResponse:
    """The ChatResponse of a plain (non-streamed) 200 body, folded as one chunk; raises the
    error an in-band error body reports, or DecodeError for a body that is no answer."""
    try:
        payload = _json.loads(body)
    except ValueError:
        try:
            payload = loads_lenient(body)
        except ValueError as exc:
            snippet = clip(redact(body.decode("utf-8", "replace")), 200)
            raise DecodeError(f"the response body is not valid JSON ({exc}): {snippet!r}") from exc
    if not isinstance(payload, dict):
        shown = clip(redact(_json.text(payload)), 200)
        raise DecodeError(f"the response body is not a JSON object: {shown}")
    if "error" in payload or payload.get("object") == "error":
        text = body.decode("utf-8", "replace")
        err = error_from_payload(payload, body_text=text, redact=redact)
        if err is not None:
            raise err
    choices = payload.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise DecodeError(
            "the response has no choices: " + clip(redact(body.decode("utf-8", "replace")), 200)
        )
    decoder = AnswerDecoder(redact)
    decoder.raw = payload
    decoder.fold(payload, whole=True)
    return decoder.response()


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """Whether a response is an event stream (a media type is case-insensitive, and may
    carry parameters: ``Text/Event-Stream; charset=utf-8``)."""
    kind = headers.get("content-type", "")
    return kind[:17].lower() == "text/event-stream"


def decode_events(body: bytes, *, redact: Callable[[str], str] = str) -> ChatResponse:
    """The ChatResponse of a plain call the server answered with an event stream anyway
    (the mirror of a server that ignores ``"stream": true``): folded event by event as a
    stream is, so the same bytes give the same answer and the same errors (an in-band
    error, a stream that ended before it finished)."""
    acc = AnswerDecoder(redact)
    sse = SSEDecoder()
    for event in [*sse.feed(body), *sse.close()]:
        acc.feed(event)
        if acc.done:
            break
    acc.flush()
    if not acc.finished:
        if not acc.events and acc.stray is None and body.strip():
            acc.stray = body[:300]  # no event at all: say what came instead
        why = "[DONE] without a finish_reason" if acc.done else "the connection closed"
        raise acc.truncated_error(why)
    return acc.response()

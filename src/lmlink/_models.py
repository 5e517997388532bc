"""The values lmlink hands back and forth: :class:`Message`, :class:`ChatResponse` (and its
:class:`Choice` entries), :class:`TokenLogprob`, :class:`ToolCall`, :class:`ModelInfo`. Plain
slotted classes (see :mod:`._values`): cheap to build on the hot path, easy to read, easy to
pickle.
"""

from __future__ import annotations

from typing import Any

from ._values import FrozenRecord, Record

__all__ = ["ChatResponse", "Choice", "Message", "ModelInfo", "TokenLogprob", "ToolCall"]


class Message(Record):
    """One chat message.

    >>> client.chat([lmlink.Message("system", "Answer in French."), lmlink.Message("user", "Hi")])
    """

    __slots__ = ("role", "content", "name", "tool_calls", "tool_call_id")  # noqa: RUF023 (the fields' order)

    def __init__(
        self,
        role: str,
        content: str | list[Any] | None = None,
        name: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
    ) -> None:
        self.role = role
        self.content = content
        self.name = name
        self.tool_calls = tool_calls
        self.tool_call_id = tool_call_id

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI wire form, without the fields that are unset."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ToolCall(FrozenRecord):
    """A function call the model asked for. ``arguments`` is JSON text, as the server sent it.

    >>> call = resp.tool_calls[0]
    >>> call.name, json.loads(call.arguments)
    """

    __slots__ = ("id", "name", "arguments", "type")  # noqa: RUF023 (the fields' order)
    id: str
    name: str
    arguments: str
    type: str

    def __init__(self, id: str, name: str, arguments: str, type: str = "function") -> None:
        self._set(id=id, name=name, arguments=arguments, type=type)

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI wire form, to send back in an assistant message."""
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }


class TokenLogprob(FrozenRecord):
    """One output token's log-probability (``logprobs=True``); ``top`` holds the most likely
    tokens at that position (``top_logprobs=k``), each a TokenLogprob with an empty ``top``.

    >>> r = client.chat("hi", logprobs=True, top_logprobs=2)
    >>> [(t.token, math.exp(t.logprob)) for t in r.logprobs]
    """

    __slots__ = ("token", "logprob", "bytes", "top")  # noqa: RUF023 (the fields' order)
    token: str
    logprob: float
    bytes: list[int] | None
    top: list[TokenLogprob]

    def __init__(
        self,
        token: str,
        logprob: float,
        bytes: list[int] | None = None,
        top: list[TokenLogprob] | None = None,
    ) -> None:
        self._set(token=token, logprob=logprob, bytes=bytes, top=[] if top is None else top)

    def __hash__(self) -> int:
        return hash((self.token, self.logprob))


class Choice(Record):
    """One of an answer's choices (``n=2`` asks for two): ``index``, ``content``,
    ``reasoning``, ``finish_reason`` (and ``finish_reason_raw``), ``tool_calls`` and
    ``logprobs`` (a list of :class:`TokenLogprob`, None unless asked for), with the same
    meaning as on :class:`ChatResponse`."""

    __slots__ = (  # noqa: RUF023 (the fields' order)
        "index",
        "content",
        "reasoning",
        "finish_reason",
        "tool_calls",
        "logprobs",
        "finish_reason_raw",
    )

    def __init__(
        self,
        index: int = 0,
        content: str = "",
        reasoning: str = "",
        finish_reason: str | None = None,
        tool_calls: list[ToolCall] | None = None,
        logprobs: list[TokenLogprob] | None = None,
        finish_reason_raw: str | None = None,
    ) -> None:
        self.index = index
        self.content = content
        self.reasoning = reasoning
        self.finish_reason = finish_reason
        self.tool_calls: list[ToolCall] = [] if tool_calls is None else tool_calls
        self.logprobs = logprobs
        self.finish_reason_raw = finish_reason_raw


class ChatResponse(Record):
    """The result of a chat call, streamed or not.

    - ``content``: the answer text (never None), with any reasoning taken out.
    - ``reasoning``: the model's reasoning (``reasoning_content``, ``reasoning`` or inline
      ``<think>…</think>``), ``""`` if none.
    - ``prompt_tokens`` / ``output_tokens``: usage as the server reported it, None if it did not.
    - ``finish_reason``: ``"stop"``, ``"length"``, ``"tool_calls"``, ... (server synonyms such
      as TGI's ``stop_sequence`` mapped to the OpenAI word; the server's own word is in
      ``finish_reason_raw``); None if the stream was cut off.
    - ``tool_calls``: list of :class:`ToolCall`.
    - ``parsed``: the validated object when ``response_format`` was a schema or model.
    - ``ttft_s``: seconds to the first token (to the response headers when not streamed);
      ``latency_s``: seconds for the whole call, retries included;
      ``tokens_per_s``: output tokens per second: after the first token when streamed,
      over the whole call when not (a plain answer's text arrives all at once).
    - ``streamed``: whether the text arrived as a stream.
    - ``choices``: one :class:`Choice` per choice (``n=2``), choice 0 first; ``content``,
      ``reasoning``, ``tool_calls`` and the finish reason above are choice 0's.
    - ``logprobs``: choice 0's token log-probabilities (``logprobs=True``), else None.
    - ``raw``: the server's decoded JSON, for fields lmlink does not read: the whole body of
      a plain answer; of a stream, its last JSON chunk (where servers put usage and
      timings). None when there was none.

    >>> resp = client.chat("Say hi")
    >>> print(resp.content, resp.output_tokens, resp.tokens_per_s)
    """

    __slots__ = (  # noqa: RUF023 (the fields' order)
        "content",
        "reasoning",
        "prompt_tokens",
        "output_tokens",
        "model",
        "finish_reason",
        "tool_calls",
        "parsed",
        "ttft_s",
        "latency_s",
        "finish_reason_raw",
        "streamed",
        "logprobs",
        "raw",
        "_choices",
    )
    # Two answers with the same text are equal however they arrived.
    _compared = _shown = (
        "content",
        "reasoning",
        "prompt_tokens",
        "output_tokens",
        "model",
        "finish_reason",
        "tool_calls",
        "parsed",
        "ttft_s",
        "latency_s",
        "finish_reason_raw",
    )

    def __init__(
        self,
        content: str = "",
        reasoning: str = "",
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
        model: str | None = None,
        finish_reason: str | None = None,
        tool_calls: list[ToolCall] | None = None,
        parsed: Any = None,
        ttft_s: float | None = None,
        latency_s: float | None = None,
        finish_reason_raw: str | None = None,
        streamed: bool = False,
        logprobs: list[TokenLogprob] | None = None,
        raw: Any = None,
        choices: list[Choice] | None = None,
    ) -> None:
        self.content = content
        self.reasoning = reasoning
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.model = model
        self.finish_reason = finish_reason
        self.tool_calls: list[ToolCall] = [] if tool_calls is None else tool_calls
        self.parsed = parsed
        self.ttft_s = ttft_s
        self.latency_s = latency_s
        self.finish_reason_raw = finish_reason_raw
        self.streamed = streamed
        self.logprobs = logprobs
        self.raw = raw
        # Only answers with more than one choice carry a list; choice 0 alone is built on
        # first read, so the common answer costs nothing more.
        self._choices = choices

    @property
    def choices(self) -> list[Choice]:
        """One :class:`Choice` per choice the server sent, by index; choice 0 is this
        answer's own content, reasoning, finish reason, tool calls and logprobs."""
        first = Choice(
            0,
            self.content,
            self.reasoning,
            self.finish_reason,
            self.tool_calls,
            self.logprobs,
            self.finish_reason_raw,
        )
        return [first, *(self._choices or ())]

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens per second of generation, when known: after the first token of
        a stream, over the whole call for a plain answer."""
        if not self.output_tokens or self.latency_s is None:
            return None
        span = self.latency_s - (self.ttft_s or 0.0) if self.streamed else self.latency_s
        if span <= 0:
            span = self.latency_s
        return self.output_tokens / span if span > 0 else None

    @property
    def total_tokens(self) -> int | None:
        """prompt_tokens + output_tokens, when both are known."""
        if self.prompt_tokens is None or self.output_tokens is None:
            return None
        return self.prompt_tokens + self.output_tokens

    def to_message(self) -> Message:
        """This answer as an assistant :class:`Message`, to continue the conversation."""
        calls = [c.to_dict() for c in self.tool_calls] or None
        return Message("assistant", self.content, tool_calls=calls)


class ModelInfo(FrozenRecord):
    """A model the server offers (``client.models()``); ``raw`` is the server's own entry."""

    __slots__ = ("id", "owned_by", "created", "raw")  # noqa: RUF023 (the fields' order)
    _compared = _shown = ("id", "owned_by", "created")
    id: str
    owned_by: str | None
    created: int | None
    raw: dict[str, Any]

    def __init__(
        self,
        id: str,
        owned_by: str | None = None,
        created: int | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        self._set(id=id, owned_by=owned_by, created=created, raw={} if raw is None else raw)

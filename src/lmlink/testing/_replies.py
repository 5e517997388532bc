"""What the fake server answers: :class:`Reply` (one response) and :class:`Faults` (random chaos).

Pure data; nothing here touches a socket. The wire shapes (chunk layouts, error bodies)
imitate those of the real servers.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "CANNED_REPLY",
    "DIALECTS",
    "Body",
    "Dialect",
    "ErrorShape",
    "Faults",
    "LineEnding",
    "ReasoningStyle",
    "Reply",
]

#: What the server says when nobody told it what to say.
CANNED_REPLY = "This is a canned reply from the lmlink test server."

Dialect = Literal["openai", "vllm", "llamacpp", "ollama", "sglang", "tgi", "mlx"]
ReasoningStyle = Literal["reasoning_content", "reasoning", "think", "think_no_open"]
LineEnding = Literal["\n", "\r\n", "\r", "mixed"]
ErrorShape = Literal["openai", "flat", "string", "tgi", "detail", "text", "empty"]
#: A verbatim body: bytes and str go out as they are, a dict as JSON.
Body: TypeAlias = bytes | str | dict[str, Any]

DIALECTS: tuple[str, ...] = ("openai", "vllm", "llamacpp", "ollama", "sglang", "tgi", "mlx")
_STYLES = ("reasoning_content", "reasoning", "think", "think_no_open")
_ENDINGS = ("\n", "\r\n", "\r", "mixed")

# `type` of the nested OpenAI-style body, by status (llama.cpp's table, which matches OpenAI's).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
# `type` of vLLM's old flat body (exception class names).
_FLAT_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


@dataclass(frozen=True)
class Reply:
    """One answer to ``POST /v1/chat/completions``; every field is optional.

    The same Reply serves plain and streamed requests: the server streams when the request
    JSON has ``"stream": true``.

    Examples::

        Reply(content="Hello")                                 # a plain answer
        Reply(reasoning="Let me think.", content="42", reasoning_style="think")
        Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}'}])
        Reply(content="slow", delay=0.05, chunk_chars=1)       # paced, one char per delta
        Reply(dialect="tgi")                                   # TGI's chunk layout
        Reply(cut_after=2)                                     # connection dies mid-stream
        Reply.error(429, "slow down", retry_after=1)           # HTTP error

    Content and reasoning:
        ``content`` is the answer text. ``None`` means the canned reply, or no text at all when
        there are ``tool_calls``. ``reasoning`` is sent in the field that ``reasoning_style``
        names (``None`` = the dialect's usual one); ``"think"`` puts ``<think>…</think>`` inline
        in the content, ``"think_no_open"`` only the closing tag (templates that inject the
        opening one). ``tool_calls`` items are ``{"id", "name", "arguments"}``; ``arguments`` is
        a JSON string (a dict is serialised) and a missing ``id`` is made up. ``finish_reason``
        defaults to ``"stop"``, or ``"tool_calls"`` when there are tool calls and no content.
        ``model`` defaults to the server's model. ``usage`` is ``(prompt, completion)`` tokens,
        ``"auto"`` (count words) or ``None`` (no usage at all); streams only carry it when the
        request asked with ``stream_options.include_usage``.

    Stream shape:
        ``chunk_chars`` characters per text delta (default: three words per delta) or explicit
        ``deltas`` (joined, they are also the plain-mode content); ``delay`` seconds between
        chunks (in plain mode: once before answering);
        ``dialect`` picks a server's layout; ``comments`` adds ``: ping``-style comment lines;
        ``line_ending`` is ``"\\n"``, ``"\\r\\n"``, ``"\\r"`` or ``"mixed"`` (LF data, CRLF
        comments, like old sse-starlette); ``send_done`` / ``send_finish`` control ``[DONE]`` and
        the ``finish_reason`` chunk; ``tool_index_missing`` drops ``index`` from tool-call
        fragments.

    HTTP errors and verbatim bodies:
        ``status``, ``headers`` and ``body`` (sent verbatim whatever the request's mode; a dict
        as JSON). A non-200 status without a body gets an OpenAI-style error body.
        ``body_override`` replaces only the plain-mode 200 body (streams still stream), e.g.
        LM Studio's ``{"error": "..."}`` on HTTP 200.

    Faults (counted in JSON chunks, role, finish and usage chunks included; a count past the
    last chunk means "just before ``[DONE]``"):
        ``cut_after`` closes the connection after N chunks, chunked encoding unterminated.
        ``stall_after`` sends N chunks then nothing, holding the connection until the client
        leaves or the server stops. ``stall_before_headers`` waits that many seconds first.
        ``stall`` never answers at all. ``cut_before_body`` sends the headers and hangs up.
        ``malformed_at`` inserts a non-JSON ``data:`` event before each listed chunk.
        ``error_at`` sends an in-band ``data: {"error": ...}`` after N chunks (``error_body``
        replaces the JSON, a str goes out verbatim), then ``[DONE]`` if ``send_done``, then ends.
        ``legacy_error`` writes it as llama.cpp's old ``error:`` SSE field (at chunk 0 unless
        ``error_at`` says otherwise).

    Byte-level replay:
        ``raw`` is the whole HTTP response, written as-is before the connection is closed.
        ``raw_body_chunks`` are body pieces written one by one (``delay`` apart), as chunked
        encoding, or close-delimited with ``http10=True`` (mlx-lm is an HTTP/1.0 server;
        ``http10=None`` means "whatever the dialect does").
    """

    content: str | None = None
    reasoning: str | None = None
    reasoning_style: ReasoningStyle | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: tuple[int, int] | Literal["auto"] | None = "auto"
    chunk_chars: int | None = None
    deltas: list[str] | None = None
    delay: float = 0.0
    dialect: Dialect = "openai"
    comments: bool = False
    line_ending: LineEnding = "\n"
    send_done: bool = True
    send_finish: bool = True
    tool_index_missing: bool = False
    status: int = 200
    headers: Mapping[str, str] | None = None
    body: Body | None = None
    body_override: Body | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    stall_before_headers: float = 0.0
    stall: bool = False
    cut_before_body: bool = False
    malformed_at: Collection[int] | None = None
    error_at: int | None = None
    error_body: dict[str, Any] | str | None = None
    legacy_error: bool = False
    raw: bytes | None = None
    raw_body_chunks: list[bytes] | None = None
    http10: bool | None = None

    def __post_init__(self) -> None:
        # Fail in the test that builds a bad Reply, not later inside the server thread.
        if self.dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {self.dialect!r}; expected one of {DIALECTS}")
        if self.reasoning_style is not None and self.reasoning_style not in _STYLES:
            raise ValueError(f"unknown reasoning_style {self.reasoning_style!r}")
        if self.line_ending not in _ENDINGS:
            raise ValueError(f"line_ending must be one of {_ENDINGS!r}")
        if self.chunk_chars is not None and self.chunk_chars < 1:
            raise ValueError("chunk_chars must be at least 1")
        if not 100 <= self.status <= 999:
            raise ValueError(f"bad HTTP status {self.status}")
        if self.delay < 0 or self.stall_before_headers < 0:
            raise ValueError("delays must not be negative")
        counts = [self.cut_after, self.stall_after, self.error_at, *(self.malformed_at or ())]
        if any(n is not None and n < 0 for n in counts):
            raise ValueError("cut_after, stall_after, error_at and malformed_at count chunks: >= 0")

    @property
    def has_fault(self) -> bool:
        """True when this reply already misbehaves, so random :class:`Faults` leave it alone.

        >>> Reply().has_fault, Reply(cut_after=1).has_fault, Reply(status=500).has_fault
        (False, True, True)
        """
        return bool(
            self.status != 200
            or self.body is not None
            or self.body_override is not None
            or self.raw is not None
            or self.raw_body_chunks is not None
            or self.cut_after is not None
            or self.stall_after is not None
            or self.stall_before_headers
            or self.stall
            or self.cut_before_body
            or self.malformed_at
            or self.error_at is not None
            or self.legacy_error
        )

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        shape: ErrorShape = "openai",
        retry_after: float | str | None = None,
        *,
        error_type: str | None = None,
        code: int | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An HTTP error in one of the body shapes real servers use .

        ``shape``: ``"openai"`` ``{"error":{"message","type","param","code"}}`` (OpenAI, Ollama,
        vLLM ≥0.10.1, llama.cpp, LocalAI); ``"flat"`` ``{"object":"error","message",...}`` (old
        vLLM, SGLang); ``"string"`` ``{"error":"..."}`` (mlx-lm, LM Studio, 401s);
        ``"tgi"`` ``{"error":"...","error_type":"..."}``; ``"detail"`` ``{"detail":"..."}``
        (FastAPI); ``"text"`` a text/plain body; ``"empty"`` no body at all. ``code`` defaults
        to the status; ``retry_after`` becomes a ``Retry-After`` header.

        Examples::

            Reply.error(503, "Loading model", error_type="unavailable_error")
            Reply.error(429, "Too many requests", retry_after=0.5)
            Reply.error(400, "context too long", shape="flat")
            Reply.error(401, shape="empty")
        """
        text = message or _default_message(status)
        body: Body
        hdrs: dict[str, str] = {}
        if shape == "openai":
            kind = error_type or _OPENAI_TYPES.get(status, "server_error")
            body = {
                "error": {"message": text, "type": kind, "param": None, "code": _code(code, status)}
            }
        elif shape == "flat":
            kind = error_type or _FLAT_TYPES.get(status, _default_message(status))
            body = {"object": "error", "message": text, "type": kind, "param": None}
            body["code"] = _code(code, status)
        elif shape == "string":
            body = {"error": text}
        elif shape == "tgi":
            kind = error_type or (
                "overloaded" if status == 429 else "validation" if status < 500 else "generation"
            )
            body = {"error": text, "error_type": kind}
        elif shape == "detail":
            body = {"detail": text}
        elif shape == "text":
            body = text
            hdrs["Content-Type"] = "text/plain; charset=utf-8"
        elif shape == "empty":
            body = b""
        else:
            raise ValueError(f"unknown error shape {shape!r}")
        if retry_after is not None:
            hdrs["Retry-After"] = format_seconds(retry_after)
        hdrs.update(headers or {})
        return cls(status=status, headers=hdrs, body=body)


def _code(code: int | str | None, status: int) -> int | str | None:
    return status if code is None else code


def _default_message(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def format_seconds(value: float | str) -> str:
    """A header value for seconds: ``1`` stays ``"1"``, ``0.5`` is ``"0.5"``, a str is kept.

    >>> format_seconds(2.0), format_seconds(0.25), format_seconds("Wed, 21 Oct 2026 07:28:00 GMT")
    ('2', '0.25', 'Wed, 21 Oct 2026 07:28:00 GMT')
    """
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# A plain-mode 200 body that stops in the middle of a JSON string.
_TRUNCATED_BODY = b'{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"message":{"con'


@dataclass
class Faults:
    """Random faults for soak and chaos tests, deterministic for a given seed.

    For every chat request whose Reply has no fault of its own (see :attr:`Reply.has_fault`),
    one draw decides: a 503 or 429 (with ``Retry-After: retry_after`` when set), a cut
    connection, a stall (the client needs a read timeout!), a malformed chunk or body, an
    in-band error, or nothing. The sequence of draws is fixed by ``seed``; which request gets
    which fault depends on arrival order, so concurrent runs differ but the rates do not.

    Example::

        srv.faults = Faults(seed=1, p_503=0.05, retry_after=0.1, p_cut=0.02, p_stall=0.01,
                            p_malformed=0.01)
        ...                     # run the soak
        srv.stats.faults        # {"503": 41, "cut": 17, ...}
    """

    seed: int | None = 0
    p_503: float = 0.0
    p_429: float = 0.0
    retry_after: float | None = None
    p_cut: float = 0.0
    p_stall: float = 0.0
    p_malformed: float = 0.0
    p_error: float = 0.0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        probs = self._table()
        if any(p < 0 for _, p in probs) or sum(p for _, p in probs) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        self._rng = random.Random(self.seed)

    def _table(self) -> list[tuple[str, float]]:
        return [
            ("503", self.p_503),
            ("429", self.p_429),
            ("cut", self.p_cut),
            ("stall", self.p_stall),
            ("malformed", self.p_malformed),
            ("error", self.p_error),
        ]

    def apply(self, reply: Reply, stream: bool) -> tuple[Reply, str | None]:
        """Maybe replace ``reply`` with a faulty one; returns ``(reply, fault name or None)``.

        >>> Faults(seed=3, p_cut=1.0).apply(Reply(), stream=True)[1]
        'cut'
        """
        # Always two draws per request, so one request's fault never shifts the next ones.
        roll = self._rng.random()
        at = self._rng.randrange(4)
        total = 0.0
        for kind, p in self._table():
            total += p
            if roll < total:
                return self._inject(kind, reply, stream, at), kind
        return reply, None

    def _inject(self, kind: str, reply: Reply, stream: bool, at: int) -> Reply:
        replace = dataclasses.replace
        if kind in ("503", "429"):
            status = int(kind)
            message = f"{_default_message(status)} (fault injected by lmlink.testing)"
            return Reply.error(status, message, retry_after=self.retry_after)
        if kind == "cut":
            return replace(reply, cut_after=at) if stream else replace(reply, cut_before_body=True)
        if kind == "stall":
            return replace(reply, stall_after=at) if stream else replace(reply, stall=True)
        if kind == "malformed":
            if stream:
                return replace(reply, malformed_at=(at,))
            return replace(reply, body_override=_TRUNCATED_BODY)
        # kind == "error": in-band, on HTTP 200
        if stream:
            return replace(reply, error_at=at)
        error = {"error": {"message": "fault injected by lmlink.testing", "type": "server_error"}}
        return replace(reply, body_override=error)

"""Turn a :class:`Reply` and a request into a :class:`Plan`: the exact bytes to send and when.

Pure (no sockets, no clock reads); ``_http`` carries plans out. Keeping the wire bytes here
means every quirk can be checked without a server::

    plan = render_chat(Reply(content="Hi"), {"stream": True}, model="m", seq=1, created=0)
    b"".join(plan.steps)   # b'data: {"id":"chatcmpl-lmlink-1",...}\\n\\n...data: [DONE]\\n\\n'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._choices import expand_chunks, expand_completion, sampling
from ._dialects import OpenAI, StreamContext, ToolCall, dialect_for
from ._json import dumps
from ._replies import CANNED_REPLY, Body, Reply

__all__ = ["Plan", "body_bytes", "json_plan", "render_chat", "split_text"]

JSON = dict[str, Any]
# Header names the server manages itself: a Reply cannot set them (use ``raw`` for that).
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_GARBAGE = b'data: {"choices":[{"delta":{"content":"unterminated'
_WORDS = re.compile(r"\s*\S+\s*")
_WORDS_PER_DELTA = 3
_End = Literal["done", "cut", "stall"]
_ARG_CHARS = 16


@dataclass
class Plan:
    """One HTTP response, fully decided: status, headers, body bytes and the faults to play.

    ``steps`` is None for a fixed-length body; otherwise the body is streamed one step at a time
    (each step becomes one HTTP chunk, ``delay`` seconds apart), then ``end`` says how the
    stream ends: ``"done"`` (terminated cleanly), ``"cut"`` (connection closed, chunked encoding
    left open) or ``"stall"`` (nothing more, connection held open). ``http10`` answers like an
    HTTP/1.0 server: no chunked encoding, no keep-alive, a stream ends when the connection closes.

    Example: ``Plan(status=404, headers=[("Content-Type", "text/plain")], body=b"nope")``.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    steps: list[bytes] | None = None
    delay: float = 0.0
    end: _End = "done"
    wait: float = 0.0
    hold: bool = False
    cut_before_body: bool = False
    http10: bool = False
    raw: bytes | None = None
    server: str = "lmlink-fake"


def json_plan(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Plan:
    """A plain JSON response. Example: ``json_plan(200, {"status": "ok"})``."""
    hdrs = [("Content-Type", "application/json")]
    if headers:
        hdrs = _merge(hdrs, headers)
    return Plan(status=status, headers=hdrs, body=dumps(obj))


def body_bytes(body: Body) -> tuple[bytes, str | None]:
    """Bytes and default Content-Type of a verbatim body (dict → JSON; text sniffed).

    >>> body_bytes({"error": "x"})
    (b'{"error":"x"}', 'application/json')
    >>> body_bytes("Not Found")
    (b'Not Found', 'text/plain; charset=utf-8')
    >>> body_bytes(b"")
    (b'', None)
    """
    if isinstance(body, dict):
        return dumps(body), "application/json"
    data = body.encode() if isinstance(body, str) else bytes(body)
    if not data:
        return data, None
    looks_json = data.lstrip()[:1] in (b"{", b"[")
    return data, "application/json" if looks_json else "text/plain; charset=utf-8"


def _merge(base: list[tuple[str, str]], extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """``base`` headers overridden (case-insensitively) by ``extra``, minus framing headers."""
    names = {k.lower() for k in extra}
    out = [(k, v) for k, v in base if k.lower() not in names]
    out.extend((k, v) for k, v in extra.items() if k.lower() not in _FRAMING)
    return out


def split_text(text: str, chunk_chars: int | None) -> list[str]:
    """Cut text into stream deltas: ``chunk_chars`` characters each, or three words each.

    >>> split_text("one two three four", None)
    ['one two three ', 'four']
    >>> split_text("abcde", 2)
    ['ab', 'cd', 'e']
    """
    if not text:
        return []
    if chunk_chars:
        return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    words = _WORDS.findall(text) or [text]
    n = _WORDS_PER_DELTA
    return ["".join(words[i : i + n]) for i in range(0, len(words), n)]


def _count_words(value: Any) -> int:
    """Words in a message ``content`` (a string or a list of ``{"type":"text"}`` parts)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(p.get("text")) for p in value if isinstance(p, dict))
    return 0


def _tool_calls(reply: Reply, seq: int) -> list[ToolCall]:
    out = []
    for i, call in enumerate(reply.tool_calls or ()):
        args = call.get("arguments", "")
        if not isinstance(args, str):
            args = dumps(args).decode()
        call_id = call.get("id") or f"call_{seq}_{i}"
        out.append(ToolCall(str(call_id), str(call["name"]), args))
    return out


class _Answer:
    """The resolved pieces of one answer, shared by plain and streamed rendering."""

    def __init__(self, reply: Reply, request: Mapping[str, Any], dialect: OpenAI, seq: int):
        self.calls = _tool_calls(reply, seq)
        if reply.deltas is not None:
            content = "".join(reply.deltas)
        elif reply.content is not None:
            content = reply.content
        else:
            content = "" if self.calls else CANNED_REPLY
        self.content = content
        self.reasoning = reply.reasoning or ""
        self.style = reply.reasoning_style or dialect.reasoning_style
        self.finish = reply.finish_reason or (
            "tool_calls" if self.calls and not content else "stop"
        )
        self.usage: tuple[int, int] | None
        if reply.usage == "auto":
            messages = request.get("messages")
            prompt = 0
            if isinstance(messages, list):
                prompt = sum(
                    _count_words(m.get("content")) for m in messages if isinstance(m, dict)
                )
            completion = len(content.split()) + len(self.reasoning.split())
            completion += sum(len(c.arguments.split()) for c in self.calls)
            self.usage = (prompt, completion)
        else:
            self.usage = reply.usage

    def message(self) -> JSON:
        """The plain-mode ``choices[0].message``."""
        text = self.content
        if self.reasoning and self.style == "think":
            text = f"<think>{self.reasoning}</think>{text}"
        elif self.reasoning and self.style == "think_no_open":
            text = f"{self.reasoning}</think>{text}"
        msg: JSON = {"role": "assistant", "content": text if text or not self.calls else None}
        if self.reasoning and self.style in ("reasoning_content", "reasoning"):
            msg[self.style] = self.reasoning
        if self.calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.calls
            ]
        return msg

    def deltas(self, reply: Reply, d: OpenAI) -> list[JSON]:
        """Semantic deltas, in order: reasoning, content, tool calls."""
        out: list[JSON] = []
        pieces = reply.chunk_chars
        if self.reasoning:
            if self.style in ("think", "think_no_open"):
                # Tags are single tokens for the models that emit them, so they get own deltas.
                if self.style == "think":
                    out.append({"content": "<think>"})
                out += [{"content": p} for p in split_text(self.reasoning, pieces)]
                out.append({"content": "</think>"})
            else:
                out += [{self.style: p} for p in split_text(self.reasoning, pieces)]
        texts = reply.deltas if reply.deltas is not None else split_text(self.content, pieces)
        out += [{"content": t} for t in texts]
        out += d.tool_deltas(self.calls, pieces or _ARG_CHARS)
        if reply.tool_index_missing:
            for delta in out:
                for frag in delta.get("tool_calls", ()):
                    frag.pop("index", None)
        if not out and d.role_delta() is None:
            # Servers without a role chunk still send one chunk for an empty answer.
            out.append({"content": ""})
        return out


def _chunks(reply: Reply, answer: _Answer, d: OpenAI, request: Mapping[str, Any]) -> list[bytes]:
    """Every JSON chunk of the stream, serialised, in order."""
    chunks: list[JSON] = []
    role = d.role_delta()
    if role is not None:
        chunks.append(d.chunk(role, None))
    deltas = answer.deltas(reply, d)
    inline_finish = (
        reply.send_finish and d.finish_inline and (d.finish_on_tools or not answer.calls)
    )
    last = len(deltas) - 1
    for i, delta in enumerate(deltas):
        finish = answer.finish if inline_finish and i == last else None
        chunks.append(d.chunk(d.dress(delta, i == 0), finish))
    if reply.send_finish and not d.finish_inline:
        chunks.append(d.finish_chunk(answer.finish))
    prompt, completion = answer.usage or (0, 0)
    if d.ctx.include_usage and answer.usage is not None:
        chunks.append(d.usage_chunk(d.usage(prompt, completion)))
    d.finalize(chunks, prompt, completion)
    n, top = sampling(request)
    if n > 1 or top is not None:
        chunks = expand_chunks(chunks, n, top)
    return [d.encode(c) for c in chunks]


def _stream_steps(reply: Reply, chunks: list[bytes], d: OpenAI) -> tuple[list[bytes], _End]:
    """SSE events grouped into paced steps, with the in-stream faults woven in."""
    le = "\n" if reply.line_ending == "mixed" else reply.line_ending
    cle = "\r\n" if reply.line_ending == "mixed" else le
    data_end = (le + le).encode()
    comment = (d.comment() + cle + cle).encode() if reply.comments else b""
    malformed = set(reply.malformed_at or ())
    n = len(chunks)
    # A position past the last chunk means "just before [DONE]".
    error_at = min(reply.error_at, n) if reply.error_at is not None else None
    if reply.legacy_error and error_at is None:
        error_at = 0
    cut_at = min(reply.cut_after, n) if reply.cut_after is not None else None
    stall_at = min(reply.stall_after, n) if reply.stall_after is not None else None
    done = b"data: [DONE]" + data_end if reply.send_done else b""
    steps: list[bytes] = []
    first = b"".join((c + cle + cle).encode() for c in d.preamble())
    for i in range(n + 1):
        step = first + comment
        first = b""
        if i in malformed:
            step += _GARBAGE + data_end
        if i == error_at:
            err = reply.error_body
            if err is None:
                err = d.error("error injected by lmlink.testing (Reply.error_at)")
            payload = err.encode() if isinstance(err, str) else d.encode_error(err)
            step += (b"error: " if reply.legacy_error else b"data: ") + payload + data_end + done
            steps.append(step)
            return steps, "done"
        if i in (cut_at, stall_at):
            if step:
                steps.append(step)
            return steps, "cut" if i == cut_at else "stall"
        step += b"data: " + chunks[i] + data_end if i < n else done
        if step:
            steps.append(step)
    return steps, "done"


def render_chat(
    reply: Reply, request: Mapping[str, Any], *, model: str, seq: int, created: int
) -> Plan:
    """The response to one chat request (``request`` is its parsed JSON).

    Example::

        render_chat(Reply.error(503, "busy"), {}, model="m", seq=1, created=0).status   # 503
    """
    if reply.raw is not None:
        return Plan(raw=reply.raw, wait=reply.stall_before_headers, hold=reply.stall)
    common: dict[str, Any] = {
        "wait": reply.stall_before_headers,
        "hold": reply.stall,
        "cut_before_body": reply.cut_before_body,
    }
    extra = reply.headers or {}
    stream = request.get("stream") is True
    if reply.body is not None or reply.status != 200:
        verbatim = reply.body if reply.body is not None else Reply.error(reply.status).body
        assert verbatim is not None
        data, ctype = body_bytes(verbatim)
        hdrs = _merge([("Content-Type", ctype)] if ctype else [], extra)
        return Plan(status=reply.status, headers=hdrs, body=data, **common)
    sse = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    if reply.raw_body_chunks is not None:
        return Plan(
            headers=_merge(sse, extra),
            steps=list(reply.raw_body_chunks),
            delay=reply.delay,
            http10=bool(reply.http10),
            **common,
        )
    if not stream and reply.body_override is not None:
        data, ctype = body_bytes(reply.body_override)
        hdrs = _merge([("Content-Type", ctype or "application/json")], extra)
        return Plan(headers=hdrs, body=data, **common)
    include_usage = False
    if stream:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    ctx = StreamContext(f"chatcmpl-lmlink-{seq}", created, reply.model or model, include_usage)
    d = dialect_for(reply.dialect, ctx)
    answer = _Answer(reply, request, d, seq)
    http10 = d.http10 if reply.http10 is None else reply.http10
    if not stream:
        usage = d.usage(*answer.usage) if answer.usage is not None else None
        payload = d.completion(answer.message(), answer.finish, usage)
        n, top = sampling(request)
        if n > 1 or top is not None:
            payload = expand_completion(payload, n, top)
        body = d.encode(payload)
        hdrs = _merge([("Content-Type", "application/json")], extra)
        common["wait"] += reply.delay
        return Plan(headers=hdrs, body=body, http10=http10, server=d.server_header, **common)
    steps, end = _stream_steps(reply, _chunks(reply, answer, d, request), d)
    return Plan(
        headers=_merge(sse, extra),
        steps=steps,
        delay=reply.delay,
        end=end,
        http10=http10,
        server=d.server_header,
        **common,
    )

"""Fuzzing the pure decoders: whatever a server sends, only ``lmlink.LMLinkError`` (or a
clean return) comes out.

Targets, each a plain function so that ``scripts/fuzz.py`` can drive the same code under
atheris for a long run:

- :func:`fuzz_sse`: the SSE decoder fed arbitrary bytes in arbitrary pieces, with any line
  cap; the same events however the bytes are split, and a spent decoder stays spent.
- :func:`fuzz_accumulator`: the stream accumulator fed arbitrary events whose data is
  chunk-shaped JSON, any JSON, or broken JSON; only a typed ``StreamError`` may escape, it
  carries a partial response and pickles.
- :func:`fuzz_error_response`: the error-body normaliser on any status, any header values
  and any body; it always returns an ``APIStatusError`` that pickles, with a clipped body
  and an echoed API key blanked everywhere.
- :func:`fuzz_payload` and :func:`fuzz_chat_body`: in-band error payloads and whole
  non-streamed bodies.

``LMLINK_FUZZ_EXAMPLES`` sets the examples per property (default 300).

Generated documents include JSON nested 240-800 levels deep, past orjson's re-encoding limit
(254); the tests at the end send JSON nested 1010 levels deep, past Python's recursion limit,
through every place that turns server data into text.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import os
import pickle
import tracemalloc
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lmlink
from lmlink._answer import AnswerDecoder, decode_answer
from lmlink._errmap import error_from_payload, error_from_response
from lmlink._errors import APIStatusError, ResponseTooLargeError, StreamError
from lmlink._models import ChatResponse
from lmlink._sse import SSEDecoder, SSEEvent
from lmlink._wire import decode_models

EXAMPLES = int(os.environ.get("LMLINK_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = "sk-fuzz-SECRET-7f3a9c1e5b"
MiB = 1 << 20

# A client made only for its ``redact``: constructing one opens no socket.
_REDACT = lmlink.Client(endpoint="http://127.0.0.1:9/v1", model="m", api_key=KEY).redact


# -- targets ------------------------------------------------------------------------------


def _feed_all(decoder: SSEDecoder, pieces: list[bytes]) -> tuple[list[SSEEvent], bool]:
    events: list[SSEEvent] = []
    try:
        for piece in pieces:
            events.extend(decoder.feed(piece))
        events.extend(decoder.close())
    except ResponseTooLargeError:
        return events, True
    return events, False


def fuzz_sse(stream: bytes, cuts: list[int], max_line: int) -> None:
    """Arbitrary bytes split at ``cuts``: only ResponseTooLargeError escapes, the events are
    well-typed, and they are the same as when the bytes come in one piece."""
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    split = SSEDecoder(max_line)
    events, failed = _feed_all(split, pieces)
    for event in events:
        assert isinstance(event, SSEEvent)
        assert isinstance(event.event, str)
        assert isinstance(event.data, bytes)
        assert event.id is None or isinstance(event.id, str)
        assert event.retry is None or (isinstance(event.retry, int) and event.retry >= 0)
        assert len(event.data) <= 16 * max_line
    if failed:
        with pytest.raises(ResponseTooLargeError):
            split.feed(b"data: more\n\n")  # a spent decoder stays spent
    whole_events, whole_failed = _feed_all(SSEDecoder(max_line), [stream])
    assert whole_failed == failed
    if not failed:
        assert whole_events == events


def _check_stream_error(exc: StreamError) -> None:
    assert isinstance(exc.partial, ChatResponse)
    assert isinstance(exc.message, str)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert again.message == exc.message


def fuzz_accumulator(events: list[tuple[str, bytes]]) -> None:
    """Events of any type and data: feed returns text or raises a typed StreamError; the
    aggregate can always be read afterwards."""
    acc = AnswerDecoder(_REDACT)
    for name, data in events:
        raised: lmlink.LMLinkError | None = None
        try:
            text = acc.feed(SSEEvent(name, data))
        except lmlink.LMLinkError as exc:
            raised = exc
        if raised is not None:
            assert isinstance(raised, StreamError), type(raised)
            _check_stream_error(raised)
            assert KEY not in raised.message
            break
        assert isinstance(text, str)
        assert isinstance(acc.reasoning_delta, str)
    resp = acc.response()
    assert isinstance(resp.content, str)
    assert isinstance(resp.reasoning, str)
    for call in resp.tool_calls:
        assert isinstance(call.name, str)
        assert isinstance(call.arguments, str)
    assert acc.finished in (True, False)
    _check_stream_error(acc.truncated_error("fuzz"))


def _check_status_error(err: object, status: int | None = None) -> None:
    assert isinstance(err, APIStatusError), type(err)
    if status is not None:
        assert err.status_code == status
    assert isinstance(err.message, str)
    assert isinstance(err.body, str)
    assert len(err.body) <= 500
    assert err.retry_after is None or (math.isfinite(err.retry_after) and err.retry_after >= 0)
    for text in (str(err), repr(err), err.body, err.message):
        assert KEY not in text
    blob = pickle.dumps(err)
    assert KEY.encode() not in blob
    again = pickle.loads(blob)
    assert type(again) is type(err)
    assert (again.message, again.status_code, again.body, again.retry_after) == (
        err.message,
        err.status_code,
        err.body,
        err.retry_after,
    )


def fuzz_error_response(status: int, headers: dict[str, str], body: bytes) -> None:
    """Any status, header values and body: always an APIStatusError, never a raise."""
    err = error_from_response(status, headers, body, redact=_REDACT)
    _check_status_error(err, status)


def fuzz_payload(payload: Any, status: int) -> None:
    """Any decoded JSON as an in-band error: None or an APIStatusError, never a raise."""
    err = error_from_payload(payload, status=status, redact=_REDACT)
    if err is not None:
        _check_status_error(err)


def fuzz_chat_body(body: bytes) -> None:
    """Any non-streamed 200 body or model list: a value, or an LMLinkError."""
    try:
        resp: ChatResponse | lmlink.LMLinkError = decode_answer(body, redact=_REDACT)
    except lmlink.LMLinkError as exc:
        resp = exc
    if isinstance(resp, lmlink.LMLinkError):
        assert isinstance(resp.message, str)
        assert type(pickle.loads(pickle.dumps(resp))) is type(resp)
    else:
        assert isinstance(resp.content, str)
        assert isinstance(resp.reasoning, str)
    try:
        models = decode_models(body)
    except lmlink.LMLinkError:
        pass
    else:
        assert all(isinstance(m.id, str) for m in models)


# -- strategies ---------------------------------------------------------------------------

VOCAB = [
    "choices",
    "delta",
    "message",
    "content",
    "reasoning_content",
    "reasoning",
    "thinking",
    "tool_calls",
    "index",
    "id",
    "function",
    "name",
    "arguments",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "model",
    "error",
    "error_type",
    "type",
    "code",
    "http_status_code",
    "object",
    "detail",
    "msg",
    "data",
    "models",
]
TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["<think>", "</think>", "<thi", "nk>", "stop", "length", "tool_calls", "error", KEY]
    ),
    st.sampled_from(["context length exceeded", "Loading model", "not found", "overloaded"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(VOCAB) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=30,
)


@st.composite
def chunk_like(draw: st.DrawFn) -> Any:
    """Something shaped like a stream chunk, with noise in every field."""
    delta = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "content": TEXT | JSONISH,
                "reasoning_content": TEXT | JSONISH,
                "reasoning": TEXT,
                "role": st.just("assistant"),
                "tool_calls": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "index": st.integers(-3, 2000) | SCALARS,
                            "id": TEXT | SCALARS,
                            "function": st.fixed_dictionaries(
                                {}, optional={"name": TEXT | SCALARS, "arguments": TEXT | JSONISH}
                            )
                            | SCALARS,
                        },
                    )
                    | SCALARS,
                    max_size=3,
                )
                | SCALARS,
            },
        )
    )
    choice = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "delta": st.just(delta) | SCALARS,
                "message": st.just(delta),
                "finish_reason": TEXT | SCALARS,
                "index": SCALARS,
            },
        )
    )
    return draw(
        st.fixed_dictionaries(
            {},
            optional={
                "choices": st.lists(st.just(choice) | JSONISH, max_size=2) | SCALARS,
                "model": TEXT | SCALARS,
                "usage": st.dictionaries(st.sampled_from(VOCAB), SCALARS) | SCALARS,
                "error": JSONISH,
                "object": st.sampled_from(["error", "chat.completion.chunk"]) | TEXT,
                "message": TEXT,
            },
        )
    )


def _encode(value: Any) -> bytes:
    return orjson.dumps(value)


def _nest(inner: bytes, depth: int, dicts: bool) -> bytes:
    head, tail = (b'{"x":', b"}") if dicts else (b"[", b"]")
    return head * depth + inner + tail * depth


# Where a deep value lands: error messages, in-band errors, tool arguments, content, the top.
_DEEP_SPOTS = [
    b'{"error":{"message":@}}',
    b'{"error":"x","n":@}',
    b'{"error":@,"object":"error"}',
    b'{"error":{"type":@,"code":@}}',
    b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":@}}]}}]}',
    b'{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":@}}]}}]}',
    b'{"choices":[{"delta":{"content":@}}]}',
    b'{"choices":[{"delta":{"tool_calls":[{"index":0,"id":@}]}}]}',
    b'{"choices":[{"message":{"content":@,"tool_calls":[{"id":@}]}}]}',
    b'{"data":@}',
    b"@",
]
DEEP = st.builds(
    lambda spot, inner, depth, dicts: spot.replace(b"@", _nest(inner, depth, dicts)),
    st.sampled_from(_DEEP_SPOTS),
    st.sampled_from([b"1", b"null", b'"' + KEY.encode() + b'"', b"[]"]),
    st.integers(240, 800),
    st.booleans(),
)
EVENT_DATA = st.one_of(
    DEEP,
    chunk_like().map(_encode),
    JSONISH.map(_encode),
    st.sampled_from([b"[DONE]", b" [DONE] ", b"", b"{", b'{"choices":[{"delta":{"content":"x']),
    st.binary(max_size=60),
    chunk_like().map(_encode).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
)
EVENTS = st.lists(
    st.tuples(st.sampled_from(["message", "error", "ping"]) | st.text(max_size=5), EVENT_DATA),
    max_size=12,
)


def _sse_bytes(events: list[tuple[str, bytes]], endings: list[str]) -> bytes:
    out = []
    for i, (name, data) in enumerate(events):
        end = endings[i % len(endings)].encode()
        field = b"data: " if name == "message" else f"event: {name}{endings[0]}data: ".encode()
        out.append(field + data.replace(b"\n", b" ").replace(b"\r", b" ") + end + end)
    return b"".join(out)


SSE_STREAM = st.one_of(
    st.binary(max_size=400),
    st.builds(_sse_bytes, EVENTS, st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1)),
    st.lists(
        st.sampled_from(
            [
                b"data: x",
                b"data:",
                b"data",
                b":comment",
                b"event: error",
                b"id: 7",
                b"id: \x00",
                b"retry: 1000",
                b"retry: 99999999999999999999999999",
                b"error: boom",
                b"\xef\xbb\xbf",
                b"\n",
                b"\r",
                b"\r\n",
                b"",
                b"\xff\xfe",
            ]
        ),
        max_size=40,
    ).map(b"".join),
)

HEADER_NAMES = st.sampled_from(["retry-after", "retry-after-ms", "location", "content-type"])


@st.composite
def http_dates(draw: st.DrawFn) -> str:
    """RFC 9110 dates, with odd offsets, in the past and the future, or mangled."""
    stamp = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    zone = timezone(timedelta(minutes=draw(st.integers(-1439, 1439))))
    text = email.utils.format_datetime(stamp.replace(tzinfo=zone))
    return draw(st.sampled_from([text, text.replace("+", "-"), text[:-6], text + " GMT"]))


HEADER_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["1e400", "nan", "-1", "inf", "0", "1" * 5000, "١٢", "1_0", " 5 "]),
    st.floats().map(repr),
    st.integers().map(str),
    http_dates(),
)
HEADERS = st.dictionaries(HEADER_NAMES | st.text(max_size=8), HEADER_VALUES, max_size=4)
STATUSES = st.one_of(
    st.sampled_from([0, 200, 301, 307, 400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504]),
    st.integers(),
)
BODIES = st.one_of(
    DEEP,
    st.binary(max_size=300),
    JSONISH.map(_encode),
    chunk_like().map(_encode),
    st.text(max_size=800).map(str.encode),
    st.builds(lambda a, b: (a + KEY + b).encode(), st.text(max_size=600), st.text(max_size=50)),
    JSONISH.map(lambda v: _encode({"error": {"message": f"bad key {KEY}", "detail": v}})),
    JSONISH.map(lambda v: _encode({"error": v, "detail": KEY})),
)


# -- properties ---------------------------------------------------------------------------


@FUZZ
@given(SSE_STREAM, st.lists(st.integers(min_value=0), max_size=8), st.sampled_from([1, 7, 64, MiB]))
@example(b"data: " + b"x" * 70 + b"\n\n", [3, 40], 64)
@example(b"\xef\xbb", [1], 1)
def test_fuzz_sse_decoder(stream: bytes, cuts: list[int], max_line: int) -> None:
    """The SSE decoder on arbitrary bytes, split anywhere: same events, only its cap error."""
    fuzz_sse(stream, cuts, max_line)


@FUZZ
@given(EVENTS)
@example([("message", b'{"choices":[{"delta":{"tool_calls":[{"index":5000}]}}]}')])
@example([("error", b"not json"), ("message", b"[DONE]")])
@example([("message", b'{"error":{"message":"key ' + KEY.encode() + b'"}}')])
def test_fuzz_stream_accumulator(events: list[tuple[str, bytes]]) -> None:
    """The accumulator on arbitrary events: text, or a typed StreamError, never anything else."""
    fuzz_accumulator(events)


@FUZZ
@given(STATUSES, HEADERS, BODIES)
@example(429, {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, b"")
@example(307, {"location": f"http://evil.example/?k={KEY}"}, b"")
@example(10**30, {"retry-after-ms": "1e309"}, b"\xff")
def test_fuzz_error_body_normaliser(status: int, headers: dict[str, str], body: bytes) -> None:
    """error_from_response on any status/headers/body returns a pickling, redacted error."""
    fuzz_error_response(status, headers, body)


@FUZZ
@given(JSONISH | chunk_like() | DEEP.map(orjson.loads), STATUSES)
def test_fuzz_in_band_error_payload(payload: Any, status: int) -> None:
    """error_from_payload on any JSON value returns None or a pickling, redacted error."""
    fuzz_payload(payload, status)


@FUZZ
@given(BODIES)
def test_fuzz_plain_chat_body(body: bytes) -> None:
    """A non-streamed body or model list of any shape: a value or an LMLinkError."""
    fuzz_chat_body(body)


# -- memory on endless input ------------------------------------------------------------------


def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_endless_line_is_capped_at_one_mib() -> None:
    """A line that never ends (64 MiB offered in 64 KiB reads) stops at the 1 MiB cap,
    with peak memory a small multiple of the cap, not of what the server sent."""
    offered = 0

    def run() -> None:
        nonlocal offered
        decoder = SSEDecoder()
        piece = b"x" * 65536
        decoder.feed(b"data: ")
        for _ in range(1024):  # bounded: 64 MiB at most
            offered += len(piece)
            try:
                decoder.feed(piece)
            except ResponseTooLargeError:
                return
        raise AssertionError("64 MiB without a line break were accepted")

    peak = _peak(run)
    assert offered <= 2 * MiB
    assert peak < 4 * MiB


def test_endless_event_is_capped() -> None:
    """Data lines that never reach the blank line ending their event stop at 16 MiB."""
    offered = 0

    def run() -> None:
        nonlocal offered
        decoder = SSEDecoder()
        block = (b"data: " + b"y" * 4000 + b"\n") * 16
        for _ in range(2048):  # bounded: 128 MiB at most
            offered += len(block)
            try:
                decoder.feed(block)
            except ResponseTooLargeError:
                return
        raise AssertionError("128 MiB of data lines in one event were accepted")

    peak = _peak(run)
    assert offered <= 17 * MiB
    assert peak < 48 * MiB


# -- regressions the fuzzers found --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"type":"sk-fuzz-SECRET-7f3a9c1e5b"},"":""}',
        b'{"error":{"message":"x","code":"sk-fuzz-SECRET-7f3a9c1e5b"}}',
        b'{"error":"x","error_type":"sk-fuzz-SECRET-7f3a9c1e5b"}',
    ],
    ids=["type", "code", "tgi-error-type"],
)
def test_error_type_and_code_are_redacted(body: bytes) -> None:
    """An error whose type or code echoes the key keeps it in no attribute and no pickle
    (hypothesis found the first body at 5,000 examples)."""
    fuzz_error_response(400, {}, body)
    err = error_from_response(400, {}, body, redact=_REDACT)
    assert KEY not in f"{err.error_type} {err.error_code}"


# -- JSON nested deeper than orjson.dumps will go (254 levels) ---------------------------------

DEEP = b"[" * 300 + b"]" * 300  # orjson.loads takes it (limit 1024), orjson.dumps does not


def test_deeply_nested_error_message_is_a_typed_error() -> None:
    """An error body whose message is JSON nested 300 deep still maps to APIStatusError."""
    fuzz_error_response(400, {}, b'{"error":{"message":' + DEEP + b"}}")


def test_deeply_nested_in_band_error_in_stream_is_a_stream_error() -> None:
    """An in-band stream error with a deep sibling field raises a StreamError, not TypeError."""
    fuzz_accumulator([("message", b'{"error":"boom","x":' + DEEP + b"}")])


def test_deeply_nested_tool_arguments_in_stream() -> None:
    """Streamed tool-call arguments sent as JSON nested 300 deep do not escape as TypeError."""
    chunk = b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":'
    fuzz_accumulator([("message", chunk + DEEP + b"}}]}}]}")])


def test_deeply_nested_tool_arguments_in_plain_body() -> None:
    """A plain body whose tool arguments nest 300 deep gives a value or an LMLinkError."""
    head = b'{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":'
    fuzz_chat_body(head + DEEP + b"}}]}}]}")


# -- server JSON nested near Python's recursion limit (str() and repr() of it raise) -----------

ABYSS = b"[" * 1010 + b"]" * 1010  # orjson.loads takes it (limit 1024); str() and repr() do not


def _stream_chunk(data: bytes) -> None:
    fuzz_accumulator([("message", data)])


def _model_list(data: bytes) -> None:
    with pytest.raises(lmlink.DecodeError):
        decode_models(data)


def _abyss(target: Any, data: bytes, name: str) -> Any:
    return pytest.param(target, data.replace(b"@", ABYSS), id=name)


@pytest.mark.parametrize(
    ("target", "data"),
    [
        _abyss(
            _stream_chunk,
            b'{"error":@}',
            "stream-in-band-error",
        ),
        _abyss(
            _stream_chunk,
            b'{"choices":[{"delta":{"content":@}}]}',
            "stream-content-list",
        ),
        _abyss(
            _stream_chunk,
            b'{"choices":[{"delta":{"reasoning_content":@}}]}',
            "stream-reasoning-list",
        ),
        _abyss(
            _stream_chunk,
            b'{"choices":[{"delta":{"tool_calls":[{"index":0,"id":@}]}}]}',
            "stream-tool-id",
        ),
        _abyss(
            fuzz_chat_body,
            b"@",
            "plain-top-level-list",
        ),
        _abyss(
            fuzz_chat_body,
            b'{"choices":[{"message":{"content":@}}]}',
            "plain-content-list",
        ),
        _abyss(
            fuzz_chat_body,
            b'{"choices":[{"message":{"tool_calls":[{"id":@}]}}]}',
            "plain-tool-id",
        ),
        _abyss(_model_list, b'{"x":@}', "model-list"),
    ],
)
def test_json_nested_1000_deep_is_typed(target: Any, data: bytes) -> None:
    """Server JSON nested 1010 levels deep (orjson reads it) ends in a value or an
    LMLinkError wherever it lands."""
    target(data)

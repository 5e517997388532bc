"""Streamed chunks of every dialect fold into the right response."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

import lmlink
from lmlink._answer import AnswerDecoder
from lmlink._sse import SSEEvent


def ev(obj: Any, event: str = "message") -> SSEEvent:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return SSEEvent(event=event, data=data)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> SSEEvent:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return ev({"choices": [choice], **top})


def fold(events: list[SSEEvent]) -> tuple[str, AnswerDecoder]:
    acc = AnswerDecoder()
    out = "".join(acc.feed(e) for e in events)
    return out, acc


def test_plain_openai_stream() -> None:
    """Role chunk, content chunks, finish chunk, usage chunk and [DONE]."""
    text, acc = fold(
        [
            chunk({"role": "assistant", "content": ""}, model="m"),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
            ev(b"[DONE]"),
        ]
    )
    resp = acc.response()
    assert text == resp.content == "Hello"
    assert (resp.prompt_tokens, resp.output_tokens, resp.model) == (5, 2, "m")
    assert resp.finish_reason == "stop"
    assert acc.done
    assert acc.finished


def test_delta_noise_is_tolerated() -> None:
    """Role in every chunk, null content, null choices and nulls everywhere do no harm."""
    text, acc = fold(
        [
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": None,
                    "tool_calls": None,
                }
            ),
            ev({"choices": None}),
            ev({"choices": [None]}),
            chunk({"role": "assistant", "content": "a", "tool_calls": None}),
            chunk({"role": "assistant", "content": ""}),
            chunk({"role": None, "content": None}, "stop", usage=None),
        ]
    )
    assert text == "a"
    assert acc.response().tool_calls == []
    assert acc.finished


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_fields(field: str) -> None:
    """reasoning_content and reasoning both go to .reasoning, never to .content."""
    text, acc = fold([chunk({field: "think"}), chunk({"content": "answer"}, "stop")])
    resp = acc.response()
    assert (text, resp.content, resp.reasoning) == ("answer", "answer", "think")


def test_both_reasoning_names_at_once_are_not_doubled() -> None:
    """vLLM's deprecation window sends both names; the text is taken once."""
    _, acc = fold([chunk({"reasoning_content": "x", "reasoning": "x"}), chunk({}, "stop")])
    assert acc.response().reasoning == "x"


def test_inline_think_split_across_chunks() -> None:
    """<think> tags split at odd places still route reasoning out of content."""
    text, acc = fold(
        [chunk({"content": c}) for c in ["<th", "ink>why", " so</thi", "nk>\n\nok"]]
        + [chunk({}, "stop")]
    )
    resp = acc.response()
    assert (text, resp.content, resp.reasoning) == ("ok", "ok", "why so")


def test_tool_calls_accumulate_by_index() -> None:
    """OpenAI-style fragments: id and name first, arguments concatenated, two calls."""
    frags = [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{"}},
        {"index": 0, "function": {"arguments": '{"a":'}},
        {"index": 0, "id": None, "function": {"name": None, "arguments": "1}"}},
        {"index": 1, "function": {"arguments": "}"}},
    ]
    _, acc = fold([chunk({"tool_calls": [f]}) for f in frags] + [chunk({}, "tool_calls")])
    calls = acc.response().tool_calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("c1", "f", '{"a":1}'),
        ("c2", "g", "{}"),
    ]


def test_tool_fragments_without_index() -> None:
    """Fragments with no index follow their id, or the latest call (openai-python#2806)."""
    frags = [
        {"id": "a", "function": {"name": "f", "arguments": '{"x"'}},
        {"function": {"arguments": ":1}"}},
        {"id": "b", "function": {"name": "g", "arguments": "{}"}},
    ]
    _, acc = fold([chunk({"tool_calls": [f]}) for f in frags] + [chunk({}, "tool_calls")])
    calls = acc.response().tool_calls
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"x":1}'), ("g", "{}")]


def test_whole_tool_call_in_one_delta_without_finish_counts_as_finished() -> None:
    """Complete tool calls with no finish_reason (TGI) are a finished stream."""
    call = {"index": 0, "id": "x", "function": {"name": "f", "arguments": {"q": 1}}}
    _, acc = fold([chunk({"tool_calls": [call]}), ev(b"[DONE]")])
    assert acc.finished
    resp = acc.response()
    assert resp.finish_reason == "tool_calls"
    assert resp.tool_calls[0].arguments == '{"q":1}'


def test_done_without_finish_is_truncated() -> None:
    """[DONE] with no finish_reason is not success."""
    _, acc = fold([chunk({"content": "half"}), ev(b"[DONE]")])
    assert acc.done
    assert not acc.finished
    err = acc.truncated_error("test")
    assert isinstance(err, lmlink.StreamError)
    assert err.partial is not None
    assert err.partial.content == "half"


def test_finish_synonyms_are_mapped() -> None:
    """TGI's stop_sequence reads as stop; the raw word is kept."""
    _, acc = fold([chunk({"content": "a"}, "stop_sequence")])
    resp = acc.response()
    assert (resp.finish_reason, resp.finish_reason_raw) == ("stop", "stop_sequence")


def test_malformed_chunk_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A chunk that is not JSON is skipped with a WARNING, and the stream goes on."""
    with caplog.at_level(logging.WARNING, logger="lmlink"):
        text, acc = fold(
            [chunk({"content": "a"}), ev(b"{not json"), chunk({"content": "b"}, "stop")]
        )
    assert text == "ab"
    assert acc.malformed == 1
    assert any("skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("event", "cls"),
    [
        (
            ev({"error": {"message": "boom", "type": "server_error", "code": 500}}),
            lmlink.InternalServerError,
        ),
        (
            ev(
                {
                    "error": {
                        "message": "Input validation error: `inputs` tokens + `max_new_tokens` "
                        "must be <= 512",
                        "http_status_code": 422,
                    }
                }
            ),
            lmlink.ContextLengthError,
        ),
        (
            ev(b'{"code":500,"message":"slot unavailable","type":"server_error"}', event="error"),
            lmlink.APIStatusError,
        ),
        (ev({"error": "Model is overloaded", "error_type": "overloaded"}), lmlink.OverloadedError),
    ],
    ids=["llamacpp", "tgi-context", "legacy-error-field", "tgi-overloaded"],
)
def test_in_band_errors_raise_typed_stream_errors(event: SSEEvent, cls: type) -> None:
    """An error object inside the stream raises both StreamError and its own class."""
    acc = AnswerDecoder()
    acc.feed(chunk({"content": "partial"}))
    with pytest.raises(lmlink.StreamError) as info:
        acc.feed(event)
    assert isinstance(info.value, cls)
    assert info.value.partial is not None
    assert info.value.partial.content == "partial"


def test_usage_chunk_labelled_chat_completion_is_read() -> None:
    """mlx-lm's usage chunk says object chat.completion and TGI's has id ""; both count."""
    _, acc = fold(
        [
            chunk({"content": "a"}, "stop", id=""),
            ev(
                {
                    "object": "chat.completion",
                    "id": "",
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1},
                }
            ),
        ]
    )
    assert (acc.prompt_tokens, acc.output_tokens) == (3, 1)


def test_text_on_the_finish_chunk_is_kept() -> None:
    """vLLM may put the last text and finish_reason in one chunk."""
    text, acc = fold([chunk({"content": "a"}), chunk({"content": "b"}, "length")])
    assert text == "ab"
    assert acc.response().finish_reason == "length"


def test_events_after_done_are_ignored() -> None:
    """Nothing after [DONE] changes the response."""
    _, acc = fold([chunk({"content": "a"}, "stop"), ev(b"[DONE]"), chunk({"content": "zzz"})])
    assert acc.response().content == "a"

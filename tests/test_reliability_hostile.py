"""Hostile answers the fuzzers turned up, through the public API and the command line:
deeply nested JSON. ``orjson.loads`` accepts up to 1024 levels, but ``orjson.dumps`` refuses
more than 254 and ``repr()`` runs into Python's recursion limit near 1000, and lmlink
re-encodes or formats server JSON in a few places (error messages, in-band errors, tool
arguments, "not a JSON object" messages, batch output lines). Such an answer must end in a
typed error, and a batch run must write a line for it and go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import lmlink
from apis import API
from batch_helpers import read_jsonl, run_cli, write_jsonl
from lmlink.testing import FakeServer, Reply

DEEP = "[" * 300 + "]" * 300
ABYSS = "[" * 1000 + "]" * 1000  # still within orjson.loads's 1024 levels


def test_in_band_stream_error_nested_too_deep_is_typed(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A stream whose in-band error object nests 300 levels deep raises a StreamError."""
    server.enqueue(Reply(content="a b c", error_at=1, error_body=f'{{"error":"x","n":{DEEP}}}'))
    with pytest.raises(lmlink.StreamError):
        make_api().chat_stream("hi")


def test_error_body_nested_too_deep_is_typed(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A 400 whose error message nests 300 levels deep raises BadRequestError."""
    body = f'{{"error":{{"message":{DEEP},"type":"invalid_request_error"}}}}'
    server.enqueue(Reply(status=400, body=body, headers={"Content-Type": "application/json"}))
    with pytest.raises(lmlink.BadRequestError):
        make_api().chat("hi")


def test_nesting_just_inside_the_limit_is_fine(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """The same answers nested 250 deep (inside orjson's limit) are typed errors today."""
    shallow = "[" * 250 + "]" * 250
    server.enqueue(Reply(content="a b c", error_at=1, error_body=f'{{"error":"x","n":{shallow}}}'))
    with pytest.raises(lmlink.StreamError):
        make_api().chat_stream("hi")


def test_plain_body_nested_1000_deep_is_typed(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A 200 whose body is a list nested 1000 levels deep raises DecodeError."""
    server.enqueue(Reply(body_override=ABYSS))
    with pytest.raises(lmlink.DecodeError):
        make_api().chat("hi")


def test_in_band_stream_error_nested_1000_deep_is_typed(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A stream whose in-band ``error`` value nests 1000 levels deep raises a StreamError."""
    server.enqueue(Reply(content="a b c", error_at=1, error_body=f'{{"error":{ABYSS}}}'))
    with pytest.raises(lmlink.StreamError):
        make_api().chat_stream("hi")


def test_batch_survives_an_answer_nested_too_deep(tmp_path: Path) -> None:
    """``lmlink batch --json`` with an answer nested 300 deep: exit 3 (error lines), one
    line per id."""
    rows = [{"id": f"n{i}", "prompt": f"item {i}"} for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    answer = json.dumps({"ok": True})[:-1] + f', "deep": {DEEP}}}'
    with FakeServer(responder=lambda req: Reply(content=answer)) as server:
        args = ["batch", str(src), "-o", str(out), "--json", "--progress", "off"]
        result = run_cli([*args, "-e", server.url, "-m", "fake-model"])
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = read_jsonl(out)
    assert sorted(line["id"] for line in lines) == ["n0", "n1", "n2"]
    assert {line["error"]["type"] for line in lines} == {"StructuredOutputError"}

"""The batch runner's fit check must never refuse an item that would fit: two cases where a
naive check would, through real HTTP against the fake server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import lmlink
from batch_helpers import read_jsonl
from lmlink.batch import run_batch
from lmlink.testing import FakeServer, fake_tokens


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def test_no_tokenizer_never_refuses_an_item_that_fits(tmp_path: Path) -> None:
    """An item padded with a long run of spaces (a table, a log, deep indentation) is a few
    tokens for the server's tokenizer, far under the window: it must be sent."""
    prompt = "Summarize:" + " " * 6000 + "end"
    assert len(fake_tokens(prompt, bos=True)) < 10  # the server would count it so
    with FakeServer(model="fake-model", persona="ollama") as server:
        server.context_length = 600
        out = tmp_path / "out.jsonl"
        summary = run_batch([{"id": "a", "prompt": prompt}], out, endpoint=server.url)
    assert summary.errors == {}, read_jsonl(out)
    assert summary.ok == 1


def test_servers_with_different_windows(tmp_path: Path) -> None:
    """Two servers, windows 600 and 8192: a 700-token prompt fits the second one, so it
    is not refused before it is sent."""
    prompt = "word " * 700
    with (
        FakeServer(model="fake-model", persona="vllm") as small,
        FakeServer(model="fake-model", persona="vllm") as large,
    ):
        small.context_length = 600
        large.context_length = 8192
        out = tmp_path / "out.jsonl"
        summary = run_batch([{"id": "a", "prompt": prompt}], out, endpoint=[small.url, large.url])
    assert "PromptTooLongError" not in summary.errors, read_jsonl(out)


def test_several_servers_the_largest_window_decides(tmp_path: Path) -> None:
    """A prompt over every server's window is still refused, judged by the largest one
    and counted by that server's tokenizer."""
    prompt = "word " * 9000
    with (
        FakeServer(model="fake-model", persona="vllm") as small,
        FakeServer(model="fake-model", persona="vllm") as large,
    ):
        small.context_length = 600
        large.context_length = 8192
        out = tmp_path / "out.jsonl"
        summary = run_batch([{"id": "a", "prompt": prompt}], out, endpoint=[small.url, large.url])
        counted = [s for s in (small, large) if any(r.path == "/tokenize" for r in s.requests)]
    assert summary.errors == {"PromptTooLongError": 1}
    (line,) = read_jsonl(out)
    assert "context window is 8192" in line["error"]["message"]
    assert counted == [large]


def test_several_servers_one_window_unknown_sends(tmp_path: Path) -> None:
    """When one of the servers does not tell its window, no item can be judged too long
    for all of them: it is sent."""
    prompt = "word " * 700
    with (
        FakeServer(model="fake-model", persona="vllm") as told,
        FakeServer(model="fake-model", persona="llama-cpp-python") as silent,
    ):
        told.context_length = 600
        out = tmp_path / "out.jsonl"
        summary = run_batch([{"id": "a", "prompt": prompt}], out, endpoint=[told.url, silent.url])
    assert summary.errors == {}, read_jsonl(out)
    assert summary.ok == 1

"""The batch runner refuses an item whose prompt cannot fit the model's context window,
instead of sending it: counted by the server's tokenizer where there is one, estimated
(without refusing anything that fits) where there is none; the window asked once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import lmlink
from batch_helpers import read_jsonl, write_jsonl
from lmlink.batch import arun_batch, run_batch
from lmlink.batch._fit import FLOOR, FitRule, short
from lmlink.cli import main
from lmlink.testing import FakeServer

WINDOW = 600
SHORT = "Say hi"
# 700 one-token words: 700 tokens by any count, far over the window.
WORDY = "word " * 700
# 3000 bytes but one token: over the byte bound, so counted, and it fits.
DENSE = "x" * 3000
# 1000 words: 5000 bytes, over the window even at 8 bytes per token.
HUGE = "word " * 1000

Run = Callable[..., lmlink.BatchSummary]


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Run:
    """run_batch, or arun_batch on an event loop of its own."""
    if request.param == "sync":
        return run_batch

    def go(*args: Any, **kwargs: Any) -> lmlink.BatchSummary:
        return asyncio.run(arun_batch(*args, **kwargs))

    return go


@pytest.fixture
def persona() -> str:
    return "vllm"


@pytest.fixture
def server(persona: str) -> Iterator[FakeServer]:
    with FakeServer(model="fake-model", persona=persona) as srv:
        srv.context_length = WINDOW
        yield srv


def items(**prompts: str) -> list[dict[str, str]]:
    return [{"id": k, "prompt": v} for k, v in prompts.items()]


def go(run: Run, server: FakeServer, tmp_path: Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    out = tmp_path / "out.jsonl"
    run(rows, out, endpoint=server.url, model="fake-model", concurrency=2)
    return {r["id"]: r for r in read_jsonl(out)}


def sent(server: FakeServer) -> list[str]:
    """The prompts of the chat requests the server got."""
    return sorted(
        r.json["messages"][-1]["content"][:10]
        for r in server.requests
        if r.path.endswith("/chat/completions")
    )


def test_a_prompt_over_the_window_is_refused_not_sent(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    """vLLM counts the long items: the one over the window gets a PromptTooLongError line
    (no status: nothing was sent), the dense one (many bytes, few tokens) is sent."""
    out = go(run, server, tmp_path, items(short=SHORT, wordy=WORDY, dense=DENSE))
    error = out["wordy"]["error"]
    assert error["type"] == "PromptTooLongError"
    assert error["status_code"] is None
    assert "by the server's tokenizer" in error["message"]
    assert f"context window is {WINDOW}" in error["message"]
    assert out["short"]["content"]
    assert out["dense"]["content"]
    assert sent(server) == sorted([SHORT[:10], DENSE[:10]])


def test_the_window_is_asked_once_and_only_long_items_are_counted(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    """One model-list query for the window per run; a count request per item that might
    not fit, none for the items that surely do."""
    rows = items(a=SHORT, b=WORDY, c=DENSE, d=WORDY + "!", e="Say bye")
    go(run, server, tmp_path, rows)
    windows = [r for r in server.requests if r.method == "GET"]
    counts = [r.json for r in server.requests if r.path == "/tokenize"]
    assert len(windows) == 1
    assert len(counts) == 3
    assert all("messages" in c for c in counts)


def test_short_items_cost_no_extra_request(run: Run, server: FakeServer, tmp_path: Path) -> None:
    """A run of items bounded under the floor makes no window query and no count."""
    go(run, server, tmp_path, items(a=SHORT, b="Say bye", c="x" * (FLOOR - 200)))
    assert {r.path for r in server.requests} == {"/v1/chat/completions"}


@pytest.mark.parametrize("persona", ["ollama"])
def test_without_a_tokenizer_the_estimate_refuses_only_the_hopeless(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    """Ollama tells the window but cannot count: only an item over it even at 8 bytes per
    token is refused; one that may fit is sent (the server answers for it)."""
    out = go(run, server, tmp_path, items(huge=HUGE, wordy=WORDY, dense=DENSE))
    assert out["huge"]["error"]["type"] == "PromptTooLongError"
    assert "estimated, no tokenizer" in out["huge"]["error"]["message"]
    assert "content" in out["wordy"]
    assert "content" in out["dense"]
    assert not [r for r in server.requests if "tokenize" in r.path]


@pytest.mark.parametrize("persona", ["sglang"])
def test_a_text_only_tokenizer_counts_the_text(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    """SGLang cannot apply the chat template: the messages' text is counted instead (the
    template only adds to it)."""
    out = go(run, server, tmp_path, items(wordy=WORDY, dense=DENSE))
    assert out["wordy"]["error"]["type"] == "PromptTooLongError"
    assert "content" in out["dense"]
    prompts = [r.json.get("prompt") for r in server.requests if r.path == "/tokenize"]
    assert sorted(p[:4] for p in prompts) == ["word", "xxxx"]


@pytest.mark.parametrize("persona", ["llama-cpp-python"])
def test_unknown_window_sends_everything(run: Run, server: FakeServer, tmp_path: Path) -> None:
    """A server that does not tell its window: every item is sent, none counted."""
    out = go(run, server, tmp_path, items(huge=HUGE, short=SHORT))
    assert all("content" in r for r in out.values())
    assert not [r for r in server.requests if "tokenize" in r.path]


def test_item_with_its_own_model_is_not_checked(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    """The window is the run's model's: an item naming another model is sent unchecked."""
    server.models = ["fake-model", "other"]
    rows: list[dict[str, Any]] = [{"id": "x", "prompt": HUGE, "model": "other"}]
    out = go(run, server, tmp_path, rows)
    assert "content" in out["x"]


def test_cli_exit_3_for_a_refused_item(server: FakeServer, tmp_path: Path) -> None:
    """On the command line a refused item is an error line like any other: exit 3, counted
    by type."""
    src = write_jsonl(tmp_path / "in.jsonl", items(a=SHORT, b=WORDY))
    args = [
        "batch",
        str(src),
        "-o",
        str(tmp_path / "o.jsonl"),
        "-e",
        server.url,
        "-m",
        "fake-model",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.stderr
    assert "errors: PromptTooLongError 1" in result.stderr


# -- the rule, pure -------------------------------------------------------------------


def test_rule_bounds_by_bytes_and_template() -> None:
    """The bound is the text's UTF-8 bytes plus the template's share; it surely fits only
    under the window."""
    messages = [{"role": "system", "content": "é" * 10}, {"role": "user", "content": "abc"}]
    assert FitRule.bound(messages) == 20 + 3 + 2 * 16 + 64
    assert FitRule(120).surely_fits(messages)
    assert not FitRule(119).surely_fits(messages)


def test_rule_cannot_bound_images() -> None:
    """A non-text part has no byte bound: never "surely fits", no estimate."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert FitRule.bound(messages) is None
    assert not FitRule(10**9).surely_fits(messages)
    assert FitRule.estimate(messages) is None


def test_rule_refuses_at_the_window() -> None:
    """A prompt that fills the window leaves no room for an answer token: refused; one
    token less is sent."""
    rule = FitRule(100)
    assert rule.refusal(99, counted=True) is None
    error = rule.refusal(100, counted=False)
    assert isinstance(error, lmlink.ContextLengthError)
    assert (error.prompt_tokens, error.context_length, error.counted) == (100, 100, False)
    assert rule.refusal(None, counted=False) is None


@pytest.mark.parametrize(
    "text",
    ["", "Say hi", "a" * 300, "a" * 431, "a" * 432, "é" * 100, "é" * 108, "€" * 60, "x" * 5000],
)
def test_the_quick_check_never_passes_what_the_bound_would_not(text: str) -> None:
    """The runner's cheap pre-check says "short" only for items the byte bound also puts
    under the floor (never the other way round)."""
    messages = [{"role": "user", "content": text}]
    if short(messages):
        bound = FitRule.bound(messages)
        assert bound is not None
        assert bound < FLOOR


def test_the_quick_check_looks_closer_at_what_it_cannot_size() -> None:
    """Parts lists and tool calls are left to the full rule."""
    assert short([{"role": "user", "content": "hi"}])
    assert short(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a" * 300}]
    )
    assert not short([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert not short([{"role": "assistant", "content": None, "tool_calls": []}])
    assert not short([{"role": "user", "content": "a" * FLOOR}])

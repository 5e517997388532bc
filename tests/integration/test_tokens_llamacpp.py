"""count_tokens and context_length against the real llama.cpp server (llama-cpp-python),
blocking and asyncio. For the suite's own server the count is checked against the
engine's tokenizer itself, run in a child process on the same model file."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

import pytest
from llama_engine import Engine

import lmlink
from apis import API, AsyncAPI

pytestmark = pytest.mark.integration

TEXTS = ["Hello world", "Say something about the model and the server.", "", "naïve café ünïcode"]


def call(api: API, name: str, *args: Any, **kwargs: Any) -> Any:
    result = getattr(api.client, name)(*args, **kwargs)
    return api.run(result) if isinstance(api, AsyncAPI) else result


def engine_counts(engine: Engine, texts: list[str]) -> list[int]:
    """What the engine's own tokenizer makes of ``texts`` (BOS added, special tokens
    parsed, as llama-cpp-python's /extras/tokenize does)."""
    model = engine.cmd[engine.cmd.index("--model") + 1]
    code = (
        "import json, sys, llama_cpp\n"
        "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.loads(sys.argv[2])\n"
        "print(json.dumps([len(m.tokenize(t.encode(), add_bos=True, special=True)) for t in texts]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, model, json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_count_tokens_matches_the_engine(llama_api: API, engine: Engine) -> None:
    """The count is the server's own tokenizer's: the same numbers the engine gives."""
    got = [call(llama_api, "count_tokens", t) for t in TEXTS]
    assert all(isinstance(n, int) and n >= 0 for n in got)
    assert got[1] > got[0]
    if engine.owned:
        assert got == engine_counts(engine, TEXTS)


def test_count_tokens_of_messages(llama_api: API, engine: Engine) -> None:
    """llama-cpp-python cannot apply the chat template over HTTP: counting messages is a
    typed error naming it (a server of yours that can count them gives a number)."""
    messages = [{"role": "user", "content": "Hello world"}]
    if engine.owned:
        with pytest.raises(lmlink.UnsupportedError, match="llama-cpp-python") as info:
            call(llama_api, "count_tokens", messages)
        assert info.value.server == "llama-cpp-python"
    else:
        with contextlib.suppress(lmlink.UnsupportedError):
            assert call(llama_api, "count_tokens", messages) > 0


def test_context_length(llama_api: API, engine: Engine) -> None:
    """llama-cpp-python does not tell its window: None (a server of yours may: an int)."""
    found = call(llama_api, "context_length")
    if engine.owned:
        assert found is None
    else:
        assert found is None or (isinstance(found, int) and found > 0)


def test_a_long_count_agrees_with_the_chat_usage(llama_api: API, engine: Engine) -> None:
    """The count of a text is close to what a chat of that text reports as prompt tokens:
    the template only adds its few tokens."""
    text = "one two three four five six seven eight nine ten " * 4
    counted = call(llama_api, "count_tokens", text)
    used = llama_api.chat(text, max_tokens=1).prompt_tokens
    assert used is not None
    assert counted - 2 <= used <= counted + 64

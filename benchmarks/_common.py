"""What the fake server and every benchmarked client agree on: the request, the canned
answers, and the checks that prove an answer is the right one.

Pure standard library (no client library is imported here), so that importing it does not
change what a client subprocess measures.
"""

from __future__ import annotations

import json
from functools import lru_cache

MODEL = "bench-model"
PROMPT = "Say hello in one word."
MESSAGES = [{"role": "user", "content": PROMPT}]
CHAT_MAX_TOKENS = 16

# The non-streamed answer: a ~300-byte chat completion with usage, shaped like OpenAI's.
CONTENT = "Hello! How can I help you today?"
PROMPT_TOKENS = 14
COMPLETION_TOKENS = 9

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1718000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CONTENT},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    },
    separators=(",", ":"),
).encode()

# Streamed answers cycle through these tokens: plain words, a JSON escape (newline) and
# non-ASCII text, as real token streams have.
TOKENS: tuple[str, ...] = (
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
)
TOKENS += ("\n", " Caf\u00e9", " na\u00efve", " r\u00e9sum\u00e9", " \u2014", " ok")


class BenchError(AssertionError):
    """An answer that is not the one the server sends: the benchmark run is invalid."""


@lru_cache(maxsize=16)
def expected_stream_text(n: int) -> str:
    """The content of an ``n``-token stream, joined."""
    return "".join(TOKENS[i % len(TOKENS)] for i in range(n))


def check_chat(content: object, completion_tokens: object) -> None:
    """Raise BenchError unless a non-streamed answer is the canned one."""
    if content != CONTENT or completion_tokens != COMPLETION_TOKENS:
        raise BenchError(f"wrong chat answer: {content!r}, {completion_tokens!r} tokens")


def check_stream(parts: list[str], n: int, completion_tokens: object, finish: object) -> None:
    """Raise BenchError unless a stream delivered exactly ``n`` right deltas, then usage and
    a finish reason."""
    if len(parts) != n:
        raise BenchError(f"stream delivered {len(parts)} content deltas, expected {n}")
    if completion_tokens != n or finish != "stop":
        raise BenchError(f"stream ended with usage {completion_tokens!r}, finish {finish!r}")
    if "".join(parts) != expected_stream_text(n):
        raise BenchError("stream content differs from what the server sent")


def chat_body(*, stream: bool = False, max_tokens: int = CHAT_MAX_TOKENS) -> bytes:
    """The request body the raw-HTTP clients send (the SDK clients build their own)."""
    body: dict[str, object] = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()

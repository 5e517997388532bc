"""The benchmarked clients, each behind the same three calls.

``chat()`` sends one non-streamed chat request and checks the answer; ``stream(n)`` reads
one ``n``-token stream and checks every delta, the usage and the finish reason. Both raise
:class:`~_common.BenchError` on a wrong answer. Client libraries are imported inside the
constructors, so a subprocess only loads the one it measures.

Every client gets a pool of 256 keep-alive connections (the largest in-flight count), so
that none pays for reconnecting: the openai SDK's default keeps only 100 idle connections,
httpx's 20, aiohttp allows 100 at once. Everything else is each library's default (the
openai SDK keeps its 2 retries and lmlink its retries and timeouts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, Protocol

from _common import (
    CHAT_MAX_TOKENS,
    MESSAGES,
    MODEL,
    PROMPT,
    BenchError,
    chat_body,
    check_chat,
    check_stream,
)

if TYPE_CHECKING:
    import aiohttp
    import httpx
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    import lmlink

POOL = 256
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
SSE_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class AsyncBench(Protocol):
    async def chat(self) -> None: ...
    async def stream(self, n: int) -> None: ...
    async def aclose(self) -> None: ...


class SyncBench(Protocol):
    def chat(self) -> None: ...
    def stream(self, n: int) -> None: ...
    def close(self) -> None: ...


def _fold_chunk(chunk: dict[str, object], parts: list[str]) -> tuple[object, object]:
    """A hand-written client's handling of one decoded chunk: (completion tokens, finish)."""
    tokens: object = None
    finish: object = None
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices:
        choice = choices[0]
        content = choice["delta"].get("content")
        if content:
            parts.append(content)
        finish = choice.get("finish_reason")
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        tokens = usage.get("completion_tokens")
    return tokens, finish


class _SSELines:
    """The SSE handling of a typical hand-written client: ``data:`` lines, ``json.loads``."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tokens: object = None
        self.finish: object = None
        self.done = False

    def line(self, line: str | bytes) -> None:
        if isinstance(line, bytes):
            line = line.decode()
        if not line.startswith("data:") or self.done:
            return
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return
        tokens, finish = _fold_chunk(json.loads(data), self.parts)
        if tokens is not None:
            self.tokens = tokens
        if finish is not None:
            self.finish = finish

    def check(self, n: int) -> None:
        if not self.done:
            raise BenchError("the stream ended without [DONE]")
        check_stream(self.parts, n, self.tokens, self.finish)


# -- lmlink ------------------------------------------------------------------------------------


class LmlinkAsync:
    def __init__(self, base: str) -> None:
        import lmlink

        self.client: lmlink.AsyncClient = lmlink.AsyncClient(
            endpoint=base, model=MODEL, max_connections=POOL
        )

    async def chat(self) -> None:
        resp = await self.client.chat(MESSAGES, max_tokens=CHAT_MAX_TOKENS)
        check_chat(resp.content, resp.output_tokens)

    async def stream(self, n: int) -> None:
        parts: list[str] = []
        async with self.client.stream(MESSAGES, max_tokens=n) as s:
            async for delta in s:
                parts.append(delta)
        resp = s.response
        check_stream(parts, n, resp.output_tokens, resp.finish_reason)

    async def aclose(self) -> None:
        await self.client.aclose()


class LmlinkSync:
    def __init__(self, base: str) -> None:
        import lmlink

        self.client: lmlink.Client = lmlink.Client(endpoint=base, model=MODEL, max_connections=POOL)

    def chat(self) -> None:
        resp = self.client.chat(MESSAGES, max_tokens=CHAT_MAX_TOKENS)
        check_chat(resp.content, resp.output_tokens)

    def stream(self, n: int) -> None:
        parts: list[str] = []
        with self.client.stream(MESSAGES, max_tokens=n) as s:
            for delta in s:
                parts.append(delta)
        resp = s.response
        check_stream(parts, n, resp.output_tokens, resp.finish_reason)

    def close(self) -> None:
        self.client.close()


# -- openai SDK --------------------------------------------------------------------------------


def _openai_stream_fold(
    chunk: openai.types.chat.ChatCompletionChunk, parts: list[str]
) -> tuple[object, object]:
    tokens = chunk.usage.completion_tokens if chunk.usage is not None else None
    finish: object = None
    if chunk.choices:
        choice = chunk.choices[0]
        if choice.delta.content:
            parts.append(choice.delta.content)
        finish = choice.finish_reason
    return tokens, finish


def _openai_limits() -> Any:
    """A pool of POOL keep-alive connections, in the SDK's own HTTP library (httpx in openai
    1.x, httpx2 in later versions): the class of its default limits tells which."""
    import openai

    limits_class = type(openai.DEFAULT_CONNECTION_LIMITS)
    return limits_class(max_connections=POOL, max_keepalive_connections=POOL)


class OpenAIAsync:
    def __init__(self, base: str, transport: Literal["httpx", "aiohttp"] = "httpx") -> None:
        import openai

        limits = _openai_limits()
        if transport == "aiohttp":
            http_client = openai.DefaultAioHttpClient(limits=limits)
        else:
            http_client = openai.DefaultAsyncHttpxClient(limits=limits)
        self.client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            base_url=base, api_key="unused", http_client=http_client
        )
        self.messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]

    async def chat(self) -> None:
        resp = await self.client.chat.completions.create(
            model=MODEL, messages=self.messages, max_tokens=CHAT_MAX_TOKENS
        )
        usage = resp.usage.completion_tokens if resp.usage is not None else None
        check_chat(resp.choices[0].message.content, usage)

    async def stream(self, n: int) -> None:
        parts: list[str] = []
        tokens = finish = None
        stream = await self.client.chat.completions.create(
            model=MODEL,
            messages=self.messages,
            max_tokens=n,
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                t, f = _openai_stream_fold(chunk, parts)
                tokens = t if t is not None else tokens
                finish = f if f is not None else finish
        check_stream(parts, n, tokens, finish)

    async def aclose(self) -> None:
        await self.client.close()


class OpenAISync:
    def __init__(self, base: str) -> None:
        import openai

        limits = _openai_limits()
        self.client: openai.OpenAI = openai.OpenAI(
            base_url=base, api_key="unused", http_client=openai.DefaultHttpxClient(limits=limits)
        )
        self.messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]

    def chat(self) -> None:
        resp = self.client.chat.completions.create(
            model=MODEL, messages=self.messages, max_tokens=CHAT_MAX_TOKENS
        )
        usage = resp.usage.completion_tokens if resp.usage is not None else None
        check_chat(resp.choices[0].message.content, usage)

    def stream(self, n: int) -> None:
        parts: list[str] = []
        tokens = finish = None
        stream = self.client.chat.completions.create(
            model=MODEL,
            messages=self.messages,
            max_tokens=n,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for chunk in stream:
                t, f = _openai_stream_fold(chunk, parts)
                tokens = t if t is not None else tokens
                finish = f if f is not None else finish
        check_stream(parts, n, tokens, finish)

    def close(self) -> None:
        self.client.close()


# -- raw HTTP libraries: what a hand-written client does ----------------------------------------


class RawAiohttp:
    def __init__(self, base: str) -> None:
        import aiohttp

        self.url = base + "/chat/completions"
        self.body = chat_body()
        self.session: aiohttp.ClientSession = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL)
        )

    async def chat(self) -> None:
        async with self.session.post(self.url, data=self.body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                raise BenchError(f"status {resp.status}")
            data = await resp.json()
        check_chat(data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"])

    async def stream(self, n: int) -> None:
        sse = _SSELines()
        body = chat_body(stream=True, max_tokens=n)
        async with self.session.post(self.url, data=body, headers=SSE_HEADERS) as resp:
            if resp.status != 200:
                raise BenchError(f"status {resp.status}")
            async for line in resp.content:
                sse.line(line)
        sse.check(n)

    async def aclose(self) -> None:
        await self.session.close()


class RawHttpxAsync:
    def __init__(self, base: str) -> None:
        import httpx

        self.url = base + "/chat/completions"
        self.body = chat_body()
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        self.client: httpx.AsyncClient = httpx.AsyncClient(limits=limits, timeout=60.0)

    async def chat(self) -> None:
        resp = await self.client.post(self.url, content=self.body, headers=JSON_HEADERS)
        if resp.status_code != 200:
            raise BenchError(f"status {resp.status_code}")
        data = resp.json()
        check_chat(data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"])

    async def stream(self, n: int) -> None:
        sse = _SSELines()
        body = chat_body(stream=True, max_tokens=n)
        async with self.client.stream("POST", self.url, content=body, headers=SSE_HEADERS) as r:
            if r.status_code != 200:
                raise BenchError(f"status {r.status_code}")
            async for line in r.aiter_lines():
                sse.line(line)
        sse.check(n)

    async def aclose(self) -> None:
        await self.client.aclose()


class RawHttpxSync:
    def __init__(self, base: str) -> None:
        import httpx

        self.url = base + "/chat/completions"
        self.body = chat_body()
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        self.client: httpx.Client = httpx.Client(limits=limits, timeout=60.0)

    def chat(self) -> None:
        resp = self.client.post(self.url, content=self.body, headers=JSON_HEADERS)
        if resp.status_code != 200:
            raise BenchError(f"status {resp.status_code}")
        data = resp.json()
        check_chat(data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"])

    def stream(self, n: int) -> None:
        sse = _SSELines()
        body = chat_body(stream=True, max_tokens=n)
        with self.client.stream("POST", self.url, content=body, headers=SSE_HEADERS) as r:
            if r.status_code != 200:
                raise BenchError(f"status {r.status_code}")
            for line in r.iter_lines():
                sse.line(line)
        sse.check(n)

    def close(self) -> None:
        self.client.close()


# -- the registry ------------------------------------------------------------------------------


def _versions(*dists: str) -> str:
    found = []
    for dist in dists:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue  # e.g. httpx2 with an openai 1.x that uses httpx
    return " + ".join(found)


@dataclass(frozen=True)
class ClientSpec:
    """One benchmarked client: how to make it, what it imports, what it is built on."""

    name: str
    label: str
    kind: Literal["async", "sync"]
    imports: str  # the statement timed for import time
    dists: tuple[str, ...]  # distributions whose versions are reported
    make: Callable[[str], AsyncBench | SyncBench]

    def versions(self) -> str:
        return _versions(*self.dists)


CLIENTS: dict[str, ClientSpec] = {
    spec.name: spec
    for spec in (
        ClientSpec(
            "lmlink",
            "lmlink AsyncClient",
            "async",
            "import lmlink; lmlink.AsyncClient",
            ("lmlink", "orjson"),
            LmlinkAsync,
        ),
        ClientSpec(
            "aiohttp",
            "raw aiohttp + json",
            "async",
            "import aiohttp",
            ("aiohttp",),
            RawAiohttp,
        ),
        ClientSpec(
            "openai",
            "openai AsyncOpenAI (httpx)",
            "async",
            "import openai",
            ("openai", "httpx2"),
            OpenAIAsync,
        ),
        ClientSpec(
            "openai-aiohttp",
            "openai AsyncOpenAI (aiohttp)",
            "async",
            "import openai, aiohttp",
            ("openai", "httpx2", "aiohttp"),
            lambda base: OpenAIAsync(base, "aiohttp"),
        ),
        ClientSpec(
            "httpx",
            "raw httpx.AsyncClient + json",
            "async",
            "import httpx",
            ("httpx",),
            RawHttpxAsync,
        ),
        ClientSpec(
            "lmlink-sync",
            "lmlink Client (sync)",
            "sync",
            "import lmlink",
            ("lmlink", "orjson"),
            LmlinkSync,
        ),
        ClientSpec(
            "openai-sync",
            "openai OpenAI (sync, httpx)",
            "sync",
            "import openai",
            ("openai", "httpx2"),
            OpenAISync,
        ),
        ClientSpec(
            "httpx-sync",
            "raw httpx.Client + json (sync)",
            "sync",
            "import httpx",
            ("httpx",),
            RawHttpxSync,
        ),
    )
}

"""Client CPU cost of lmlink's HTTP transports against aiohttp, httpx and http.client.

Starts a canned-response HTTP/1.1 server (asyncio, keep-alive) in a separate process, then
measures the CPU time (``time.process_time``) the *client* process spends:

* per request with 64 requests in flight (async: lmlink AsyncTransport, aiohttp, httpx),
* per request one after another (sync: lmlink SyncTransport, http.client, httpx.Client),
* per streamed chunk of one 20,000-event chunked SSE stream, reading bytes only.

``/json`` answers a ~300-byte OpenAI-style chat completion with Content-Length;
``/stream?n=N`` a chunked ``text/event-stream`` of N ``data: {...}`` events and
``data: [DONE]``. Every client POSTs the same small chat request. Each figure is the best
of three runs. Run: ``.venv/bin/python benchmarks/transports.py`` (about a minute).
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import aiohttp
import httpx

from lmlink._http.aio import AsyncTransport
from lmlink._http.common import Timeouts
from lmlink._http.sync import SyncTransport

IN_FLIGHT = 64
STREAM_EVENTS = 20_000
REQUEST = (
    b'{"model":"llama3","messages":[{"role":"user","content":"Say hello in one word."}],'
    b'"max_tokens":16,"temperature":0}'
)
HEADERS = [("Content-Type", "application/json"), ("Accept", "application/json")]
TIMEOUTS = Timeouts(connect=10.0, idle=30.0, deadline=None)

# -- the server (runs in its own process) ------------------------------------------------------

COMPLETION = (
    b'{"id":"chatcmpl-8a1b2c3d","object":"chat.completion","created":1718000000,'
    b'"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":14,"completion_tokens":3,"total_tokens":17}}'
)
EVENT = (
    b'data: {"id":"chatcmpl-8a1b2c3d","object":"chat.completion.chunk","created":1718000000,'
    b'"model":"llama3","choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}'
    b"\n\n"
)


def _canned_json() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ndate: Mon, 10 Jun 2024 12:00:00 GMT\r\nserver: uvicorn\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(COMPLETION), COMPLETION)
    )


def _canned_stream(n: int) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ndate: Mon, 10 Jun 2024 12:00:00 GMT\r\nserver: uvicorn\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
    done = b"data: [DONE]\n\n"
    return head + chunk * n + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)


_STREAMS: dict[bytes, bytes] = {}
_JSON = _canned_json()


class _ServerProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            size = 0
            at = head.lower().find(b"content-length:")
            if at >= 0:
                size = int(head[at + 15 : head.find(b"\r\n", at) if b"\r\n" in head[at:] else None])
            if len(buf) < end + 4 + size:
                break
            buf = buf[end + 4 + size :]
            target = head.split(b" ", 2)[1]
            if target.startswith(b"/stream"):
                reply = _STREAMS.get(target)
                if reply is None:
                    reply = _STREAMS[target] = _canned_stream(int(target.split(b"=")[1]))
                self.transport.write(reply)
            else:
                self.transport.write(_JSON)
        self.buf = buf


def serve() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ServerProtocol, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

    asyncio.run(main())


# -- measurement --------------------------------------------------------------------------------


def cpu(run: Callable[[], Any], repeat: int = 3) -> float:
    """Best CPU seconds of ``repeat`` runs of ``run``."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def in_flight(
    loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[bytes]], n: int
) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            body = await call()
            assert len(body) == len(COMPLETION)

    async def main() -> None:
        await asyncio.gather(*(worker(n // IN_FLIGHT) for _ in range(IN_FLIGHT)))

    loop.run_until_complete(main())


def bench_async(base: str, n: int, n_slow: int) -> tuple[dict[str, float], dict[str, float]]:
    per_request: dict[str, float] = {}
    per_chunk: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    url, stream_url = base + "/json", f"{base}/stream?n={STREAM_EVENTS}"

    # lmlink
    transport = AsyncTransport(max_connections=IN_FLIGHT)

    async def lm_call() -> bytes:
        resp = await transport.request("POST", url, HEADERS, REQUEST, TIMEOUTS)
        return await resp.read()

    async def lm_stream() -> None:
        resp = await transport.request("POST", stream_url, HEADERS, REQUEST, TIMEOUTS)
        async for _ in resp.aiter_bytes():
            pass

    in_flight(loop, lm_call, IN_FLIGHT * 20)  # warm up: open the connections
    per_request["lmlink AsyncTransport"] = cpu(lambda: in_flight(loop, lm_call, n)) / n
    per_chunk["lmlink AsyncTransport"] = cpu(lambda: loop.run_until_complete(lm_stream()))
    loop.run_until_complete(transport.aclose())

    # aiohttp
    async def make_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT))

    session = loop.run_until_complete(make_session())
    ah_headers = dict(HEADERS)

    async def ah_call() -> bytes:
        async with session.post(url, data=REQUEST, headers=ah_headers) as resp:
            return await resp.read()

    async def ah_stream() -> None:
        async with session.post(stream_url, data=REQUEST, headers=ah_headers) as resp:
            async for _ in resp.content.iter_any():
                pass

    in_flight(loop, ah_call, IN_FLIGHT * 20)
    per_request["aiohttp"] = cpu(lambda: in_flight(loop, ah_call, n)) / n
    per_chunk["aiohttp"] = cpu(lambda: loop.run_until_complete(ah_stream()))
    loop.run_until_complete(session.close())

    # httpx
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    client = httpx.AsyncClient(limits=limits, timeout=30.0)

    async def hx_call() -> bytes:
        resp = await client.post(url, content=REQUEST, headers=ah_headers)
        return resp.content

    async def hx_stream() -> None:
        async with client.stream("POST", stream_url, content=REQUEST, headers=ah_headers) as r:
            async for _ in r.aiter_bytes():
                pass

    in_flight(loop, hx_call, IN_FLIGHT * 10)
    per_request["httpx.AsyncClient"] = cpu(lambda: in_flight(loop, hx_call, n_slow)) / n_slow
    per_chunk["httpx.AsyncClient"] = cpu(lambda: loop.run_until_complete(hx_stream()))
    loop.run_until_complete(client.aclose())
    loop.close()
    return per_request, {k: v / STREAM_EVENTS for k, v in per_chunk.items()}


def bench_sync(base: str, port: int, n: int) -> tuple[dict[str, float], dict[str, float]]:
    per_request: dict[str, float] = {}
    per_chunk: dict[str, float] = {}
    url, stream_url = base + "/json", f"{base}/stream?n={STREAM_EVENTS}"

    transport = SyncTransport()

    def lm_run() -> None:
        for _ in range(n):
            with transport.request("POST", url, HEADERS, REQUEST, TIMEOUTS) as resp:
                assert len(resp.read()) == len(COMPLETION)

    def lm_stream() -> None:
        with transport.request("POST", stream_url, HEADERS, REQUEST, TIMEOUTS) as resp:
            for _ in resp.iter_bytes():
                pass

    per_request["lmlink SyncTransport"] = cpu(lm_run) / n
    per_chunk["lmlink SyncTransport"] = cpu(lm_stream)
    transport.close()

    conn = http.client.HTTPConnection("127.0.0.1", port)
    hc_headers = dict(HEADERS)

    def hc_run() -> None:
        for _ in range(n):
            conn.request("POST", "/json", REQUEST, hc_headers)
            assert len(conn.getresponse().read()) == len(COMPLETION)

    def hc_stream() -> None:
        conn.request("POST", f"/stream?n={STREAM_EVENTS}", REQUEST, hc_headers)
        resp = conn.getresponse()
        while resp.read1(65536):
            pass

    per_request["http.client"] = cpu(hc_run) / n
    per_chunk["http.client"] = cpu(hc_stream)
    conn.close()

    client = httpx.Client(timeout=30.0)

    def hx_run() -> None:
        for _ in range(n // 2):
            assert len(client.post(url, content=REQUEST, headers=hc_headers).content) > 0

    def hx_stream() -> None:
        with client.stream("POST", stream_url, content=REQUEST, headers=hc_headers) as resp:
            for _ in resp.iter_bytes():
                pass

    per_request["httpx.Client"] = cpu(hx_run) / (n // 2)
    per_chunk["httpx.Client"] = cpu(hx_stream)
    client.close()
    return per_request, {k: v / STREAM_EVENTS for k, v in per_chunk.items()}


def table(rows: dict[str, float], base: str, unit: str) -> list[str]:
    out = []
    for name, value in rows.items():
        ratio = rows[base] / value
        out.append(f"| {name} | {value * 1e6:.1f} | {ratio:.2f}x |")
    return [f"| client | µs/{unit} | speed vs {base} |", "|---|---:|---:|", *out]


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        a_req, a_chunk = bench_async(base, n=12_800, n_slow=3_200)
        s_req, s_chunk = bench_sync(base, port, n=6_000)
    finally:
        server.kill()
        server.wait()
    print(f"Client CPU time, Python {sys.version.split()[0]}; lower µs is better.\n")
    print(f"Async, {IN_FLIGHT} requests in flight (POST /json, ~300-byte completion):\n")
    print("\n".join(table(a_req, "aiohttp", "request")))
    print("\nSync, one request after another:\n")
    print("\n".join(table(s_req, "http.client", "request")))
    print(f"\nStreaming, one {STREAM_EVENTS:,}-event chunked SSE stream, bytes only:\n")
    chunks = {**a_chunk, **s_chunk}
    lines = table(chunks, "aiohttp", "chunk")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()

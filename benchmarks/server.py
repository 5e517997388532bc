"""A fast fake OpenAI-compatible server for the benchmarks (HTTP/1.1, keep-alive).

``POST /v1/chat/completions`` answers the canned ~300-byte chat completion of
``_common.COMPLETION``, or, with ``"stream": true``, a chunked ``text/event-stream`` of
``max_tokens`` chunk events (one HTTP chunk per event, as uvicorn-based servers send them),
then a finish chunk, a usage chunk and ``data: [DONE]``. ``GET /v1/models`` lists the model.
Every request body is parsed (orjson) and checked: a wrong model or no messages is a 400, so
a client that sends the wrong thing cannot pass validation.

Raw ``asyncio.Protocol``, no framework; answers are built once and cached, so the server
spends its time on socket I/O. ``--workers N`` runs N processes on one port with
``SO_REUSEPORT`` (the kernel spreads connections over them).

    .venv/bin/python benchmarks/server.py [--port 0] [--workers 1]

prints ``PORT`` on its first stdout line once it listens, then serves until killed (or until
``--max-seconds`` pass: it never outlives a forgotten benchmark for long).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from collections import OrderedDict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import COMPLETION, MODEL, PROMPT_TOKENS, TOKENS

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
MAX_STREAM_TOKENS = 1_000_000

_HEAD = b"HTTP/1.1 %d %s\r\ndate: Mon, 10 Jun 2024 12:00:00 GMT\r\nserver: lmlink-bench\r\n"


def _plain(status: int, reason: bytes, body: bytes) -> bytes:
    return (
        _HEAD % (status, reason)
        + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        + body
    )


CHAT_REPLY = _plain(200, b"OK", COMPLETION)
MODELS_REPLY = _plain(
    200,
    b"OK",
    orjson.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
    ),
)
NOT_FOUND = _plain(404, b"Not Found", b'{"error":{"message":"not found","type":"not_found"}}')


def _bad_request(why: str) -> bytes:
    body = orjson.dumps({"error": {"message": why, "type": "invalid_request_error"}})
    return _plain(400, b"Bad Request", body)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    payload = {
        "id": "chatcmpl-bench0002",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    # ensure_ascii=False: UTF-8 on the wire, as the real servers send it.
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return _chunk(b"data: " + text.encode() + b"\n\n")


_TOKEN_EVENTS = [_event({"content": t}) for t in TOKENS]
_STREAM_HEAD = (
    _HEAD % (200, b"OK") + b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    + _event({"role": "assistant", "content": ""})
)


def _stream_tail(n: int) -> bytes:
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n}
    usage["total_tokens"] = PROMPT_TOKENS + n
    done = _event({}, "stop")
    with_usage = orjson.dumps(
        {
            "id": "chatcmpl-bench0002",
            "object": "chat.completion.chunk",
            "created": 1718000000,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
    )
    return (
        done + _chunk(b"data: " + with_usage + b"\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    )


class _StreamCache:
    """Whole stream replies by token count, the few most recent kept."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._replies: OrderedDict[int, bytes] = OrderedDict()

    def get(self, n: int) -> bytes:
        reply = self._replies.get(n)
        if reply is None:
            events = _TOKEN_EVENTS
            k = len(events)
            body = b"".join(events) * (n // k) + b"".join(events[: n % k])
            reply = _STREAM_HEAD + body + _stream_tail(n)
            self._replies[n] = reply
            if len(self._replies) > self._size:
                self._replies.popitem(last=False)
        else:
            self._replies.move_to_end(n)
        return reply


_STREAMS = _StreamCache()


def answer(method: bytes, target: bytes, body: bytes) -> bytes:
    """The reply to one request."""
    if target == b"/v1/chat/completions" and method == b"POST":
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _bad_request("the body is not JSON")
        if not isinstance(req, dict) or req.get("model") != MODEL:
            return _bad_request(f"unknown model; this server serves {MODEL!r}")
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad_request("messages must be a non-empty list")
        if not req.get("stream"):
            return CHAT_REPLY
        n = req.get("max_tokens")
        if not isinstance(n, int) or not 0 < n <= MAX_STREAM_TOKENS:
            return _bad_request(f"max_tokens must be 1..{MAX_STREAM_TOKENS} for a stream")
        return _STREAMS.get(n)
    if target == b"/v1/models" and method == b"GET":
        return MODELS_REPLY
    return NOT_FOUND


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parse requests as they complete, answer each in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        buf = self.buf + data if self.buf else data
        for _ in range(1024):  # bounded: requests pipelined in one read
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    transport.abort()
                    return
                break
            head = buf[:end].lower()
            size = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 17)
                size = int(head[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding:" in head:
                transport.write(_bad_request("chunked request bodies are not supported"))
                transport.close()
                return
            if size > MAX_BODY:
                transport.abort()
                return
            if len(buf) < end + 4 + size:
                break
            request_line = buf[: buf.find(b"\r\n")]
            body = buf[end + 4 : end + 4 + size]
            buf = buf[end + 4 + size :]
            method, _, rest = request_line.partition(b" ")
            target = rest.partition(b" ")[0]
            transport.write(answer(method, target, body))
            if b"\r\nconnection: close" in head:
                transport.close()
                return
        self.buf = buf


def _listen(port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _serve(sock: socket.socket, max_seconds: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Connection, sock=sock, backlog=4096)
        async with server:
            await asyncio.sleep(max_seconds)

    asyncio.run(main())


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    workers = max(1, args.workers)
    first = _listen(args.port, reuse_port=workers > 1)
    port = first.getsockname()[1]
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            first.close()
            _serve(_listen(port, reuse_port=True), args.max_seconds)
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, _exit)
    print(port, flush=True)
    try:
        _serve(first, args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()

"""Token-count edges, through real HTTP: a server known by its model list
whose tokenizer route is missing (an older build, or a gateway that forwards only ``/v1``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import lmlink


def _handler(owner: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """A model list that names the server; 404 for every other route."""

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                entry = {"id": "m", "object": "model", "owned_by": owner, "max_model_len": 2048}
                self._send(200, {"object": "list", "data": [entry]})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(404, {"detail": "Not Found"})

    return Handler


@pytest.fixture(params=["vllm", "sglang", "llamacpp"])
def no_tokenizer(request: pytest.FixtureRequest) -> Iterator[str]:
    """The /v1 URL of a server that says it is ``request.param`` and has no /tokenize."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(request.param))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_missing_tokenizer_route_is_unsupported(no_tokenizer: str, kind: str) -> None:
    """count_tokens on a server without its tokenizer route says so, as the typed error
    count_tokens documents for servers without one (not a model-name 404)."""
    if kind == "sync":
        with (
            lmlink.Client(endpoint=no_tokenizer, model="m") as client,
            pytest.raises(lmlink.UnsupportedError, match="tokeniz"),
        ):
            client.count_tokens("hello")
        return

    async def go() -> None:
        async with lmlink.AsyncClient(endpoint=no_tokenizer, model="m") as client:
            await client.count_tokens("hello")

    with pytest.raises(lmlink.UnsupportedError, match="tokeniz"):
        asyncio.run(go())

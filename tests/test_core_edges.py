"""Edges of the core found by a hostile review: event loops that close under a client, call
options on every path, and the agreement of plain and streamed answers on odd bodies. All
through real HTTP (the fake server on port 0)."""

from __future__ import annotations

import asyncio
import gc

import lmlink
from lmlink.testing import FakeServer

# -- event loops -------------------------------------------------------------------------------


def test_asyncio_run_per_call_leaves_no_socket_unclosed(server: FakeServer) -> None:
    """``asyncio.run(client.chat(...))`` once per call, the usual script pattern: the pool of
    each finished loop is closed for real (no ResourceWarning, which pytest makes an error),
    and the server sees every connection hung up."""
    client = lmlink.AsyncClient(endpoint=server.url, model="fake-model", timeout=5.0)
    for text in ("one", "two", "three"):
        assert asyncio.run(client.chat(text)).content

    async def leave_early() -> None:
        async with client.stream("four") as s:
            async for _ in s:
                break

    asyncio.run(leave_early())
    asyncio.run(client.aclose())
    gc.collect()

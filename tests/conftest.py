"""Shared fixtures: a fake server per test and one client API run both sync and async.

Every behavioural test takes ``api``, which is parametrised over the blocking
:class:`lmlink.Client` and the asyncio :class:`lmlink.AsyncClient`, so the two shells are
held to the same behaviour (parity).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lmlink
from lmlink.testing import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fresh fake server on a free port."""
    with FakeServer(model="fake-model") as srv:
        yield srv


class SyncAPI:
    """The blocking client, behind the same face as :class:`AsyncAPI`."""

    kind = "sync"

    def __init__(self, **kwargs: Any) -> None:
        self.client = lmlink.Client(**kwargs)

    def chat(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.client.chat(*args, **kwargs)

    def chat_stream(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.client.chat_stream(*args, **kwargs)

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> tuple[list[str], Any]:
        """Iterate a stream (only ``take`` deltas, if given); return deltas and the stream."""
        deltas: list[str] = []
        with self.client.stream(*args, **kwargs) as s:
            for delta in s:
                deltas.append(delta)
                if take is not None and len(deltas) >= take:
                    break
        return deltas, s

    def models(self) -> list[lmlink.ModelInfo]:
        return self.client.models()

    def close(self) -> None:
        self.client.close()


class AsyncAPI:
    """The asyncio client, driven on a private event loop that lives as long as it."""

    kind = "async"

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.run(self._make(kwargs))

    @staticmethod
    async def _make(kwargs: dict[str, Any]) -> lmlink.AsyncClient:
        return lmlink.AsyncClient(**kwargs)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def chat(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.run(self.client.chat(*args, **kwargs))  # type: ignore[no-any-return]

    def chat_stream(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.run(self.client.chat_stream(*args, **kwargs))  # type: ignore[no-any-return]

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> tuple[list[str], Any]:
        async def go() -> tuple[list[str], Any]:
            deltas: list[str] = []
            async with self.client.stream(*args, **kwargs) as s:
                async for delta in s:
                    deltas.append(delta)
                    if take is not None and len(deltas) >= take:
                        break
            return deltas, s

        return self.run(go())  # type: ignore[no-any-return]

    def models(self) -> list[lmlink.ModelInfo]:
        return self.run(self.client.models())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()


API = SyncAPI | AsyncAPI


@pytest.fixture(params=["sync", "async"])
def make_api(request: pytest.FixtureRequest, server: FakeServer) -> Iterator[Callable[..., API]]:
    """Build a client of the parametrised kind; defaults point it at the fake server."""
    made: list[API] = []

    def make(**kwargs: Any) -> API:
        kwargs.setdefault("endpoint", server.url)
        kwargs.setdefault("model", "fake-model")
        kwargs.setdefault("timeout", 5.0)
        api: API = SyncAPI(**kwargs) if request.param == "sync" else AsyncAPI(**kwargs)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., API]) -> API:
    """A client with default settings, sync or async."""
    return make_api()


@pytest.fixture(autouse=True)
def _no_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never pick up the developer's own server settings (the integration
    suite reads them on purpose)."""
    if request.node.get_closest_marker("integration"):
        return
    for name in (
        "LMLINK_ENDPOINT",
        "OPENAI_BASE_URL",
        "LMLINK_MODEL",
        "LMLINK_API_KEY",
        "OPENAI_API_KEY",
        "LMLINK_DISCOVER_PORTS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LMLINK_NO_DISCOVERY", "1")

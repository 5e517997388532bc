"""Shared fixtures: a fake server per test and one client API run both sync and async.

Every behavioural test takes ``api``, which is parametrised over the blocking
:class:`lmlink.Client` and the asyncio :class:`lmlink.AsyncClient`, so the two shells are
held to the same behaviour (parity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apis import API, AsyncAPI, SyncAPI
from lmlink.testing import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fresh fake server on a free port."""
    with FakeServer(model="fake-model") as srv:
        yield srv


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

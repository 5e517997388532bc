"""A real llama.cpp server (through llama-cpp-python) for the integration suite.

The session starts ``python -m llama_cpp.server`` on a free port with a tiny random-weight
model the suite generates (``make_model.py``), waits for it through lmlink itself
(``Client.wait_ready``), and stops it at the end. Its log is attached to every failing
test's report.

Set ``LMLINK_ENDPOINT`` (and ``LMLINK_MODEL``) to run the same tests against a server of
your own instead; the tests that kill and restart the server are then skipped, since they
need a server the suite owns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_engine import HERE, Engine

import lmlink
from apis import API, AsyncAPI, SyncAPI


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


_ENGINE: list[Engine] = []


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The server: yours if LMLINK_ENDPOINT is set, else a llama.cpp server of the suite's."""
    endpoint = os.environ.get("LMLINK_ENDPOINT")
    if endpoint:
        found = Engine(endpoint, os.environ.get("LMLINK_MODEL", ""))
        if not found.model:
            with lmlink.Client(endpoint=endpoint) as client:
                found.model = client.models()[0].id
        _ENGINE.append(found)
        yield found
        return
    started = time.monotonic()
    own = Engine.start_owned(tmp_path_factory.mktemp("llama") / "server.log")
    print(f"llama.cpp server ready in {time.monotonic() - started:.1f} s at {own.url}")
    _ENGINE.append(own)
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(params=["sync", "async"])
def make_engine_api(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Callable[..., API]]:
    """Clients of the parametrised kind, pointed at the engine."""
    made: list[API] = []

    def make(**kwargs: Any) -> API:
        kwargs.setdefault("endpoint", engine.url)
        kwargs.setdefault("model", engine.model)
        kwargs.setdefault("timeout", 60.0)
        api: API = SyncAPI(**kwargs) if request.param == "sync" else AsyncAPI(**kwargs)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def eapi(make_engine_api: Callable[..., API]) -> API:
    """A client of the engine, sync or async."""
    return make_engine_api()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ENGINE and HERE in Path(str(item.fspath)).resolve().parents:
        report.sections.append(("llama.cpp server log (tail)", _ENGINE[0].log_tail()))

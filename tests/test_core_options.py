"""Per-call options and deadlines, sync and async, through real HTTP: reserved names in
``extra_body``, the OpenAI SDK's ``extra_headers``/``extra_query``, the total timeout of a
whole ``run_tools`` loop, a stream's clock starting when its request is sent, and an
``AsyncClient`` closed from another event loop leaving no socket behind."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lmlink
from apis import API
from lmlink._drivers import ToolLoop
from lmlink.testing import FakeServer, Reply

MODES = ["plain", "stream"]


def _ask(api: API, mode: str, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
    if mode == "plain":
        return api.chat(*args, **kwargs)
    return api.chat_stream(*args, **kwargs)


# -- extra_body, extra_headers, extra_query ----------------------------------------------------


@pytest.mark.parametrize("name", ["model", "messages", "stream"])
@pytest.mark.parametrize("mode", MODES)
def test_extra_body_cannot_replace_what_the_call_sets(
    api: API, server: FakeServer, mode: str, name: str
) -> None:
    """extra_body with model/messages/stream is a ConfigurationError naming the argument to
    use; nothing is sent."""
    with pytest.raises(lmlink.ConfigurationError, match=f"extra_body\\['{name}'\\]"):
        _ask(api, mode, "q", extra_body={name: "other"})
    assert server.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_a_field_given_twice_is_refused(api: API, server: FakeServer, mode: str) -> None:
    """seed= and extra_body={"seed": ...} together: refused, not one silently dropped."""
    with pytest.raises(lmlink.ConfigurationError, match="seed is given twice"):
        _ask(api, mode, "q", seed=1, extra_body={"seed": 2})
    assert server.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_extra_headers_is_headers(api: API, server: FakeServer, mode: str) -> None:
    """extra_headers= (the OpenAI SDK's name) sends headers, never a body field."""
    _ask(api, mode, "q", extra_headers={"X-Trace": "t-2"})
    req = server.requests[-1]
    assert req.headers["x-trace"] == "t-2"
    assert "extra_headers" not in req.json


def test_headers_and_extra_headers_together_are_refused(api: API, server: FakeServer) -> None:
    """Both names at once is ambiguous: refused."""
    with pytest.raises(lmlink.ConfigurationError, match="not both"):
        api.chat("q", headers={"A": "1"}, extra_headers={"B": "2"})
    assert server.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_extra_query_is_refused(api: API, server: FakeServer, mode: str) -> None:
    """extra_query= is refused with a clear message rather than sent in the body."""
    with pytest.raises(lmlink.ConfigurationError, match="extra_query= is not supported"):
        _ask(api, mode, "q", extra_query={"api-version": "1"})
    assert server.requests == []


# -- run_tools: one deadline for the whole loop ------------------------------------------------


def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


def _run_tools(api: API, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
    if isinstance(api.client, lmlink.AsyncClient):
        return api.run(api.client.run_tools(*args, **kwargs))  # type: ignore[no-any-return]
    return api.client.run_tools(*args, **kwargs)


@pytest.mark.parametrize("where", ["call", "client"])
def test_run_tools_total_timeout_bounds_the_whole_loop(
    make_api: Callable[..., API], server: FakeServer, where: str
) -> None:
    """A model that keeps calling tools, 0.5 s a turn, with a 1.2 s total: the loop ends
    with APITimeoutError within a few turns, not after max_steps turns of 0.5 s each."""
    server.responder = lambda req: Reply(
        tool_calls=[{"id": "c", "name": "lookup", "arguments": '{"key": "k"}'}], delay=0.5
    )
    timeout = lmlink.Timeout(idle=5, total=1.2)
    if where == "client":
        api, kwargs = make_api(timeout=timeout), {}
    else:
        api, kwargs = make_api(), {"timeout": timeout}
    with pytest.raises(lmlink.APITimeoutError) as info:
        _run_tools(api, "q", [lookup], max_steps=8, **kwargs)
    assert info.value.phase == "total"
    assert 2 <= len(server.requests) <= 3
    assert not {"timeout"} & set(server.requests[-1].json)


def test_tool_loop_deadline_pure() -> None:
    """Each turn's model call gets what is left of the loop's total; past it, a turn raises."""
    now = [10.0]
    loop = ToolLoop(
        "q",
        [lookup],
        8,
        blocking=True,
        timeout=lmlink.Timeout(idle=7, total=5),
        kwargs={"seed": 1},
        clock=lambda: now[0],
    )
    assert loop.kwargs() == {"seed": 1, "timeout": lmlink.Timeout(idle=7, total=5)}
    now[0] += 3.5
    assert loop.kwargs()["timeout"] == lmlink.Timeout(idle=7, total=1.5)
    now[0] += 1.5
    with pytest.raises(lmlink.APITimeoutError, match="run_tools' total timeout of 5 s"):
        loop.kwargs()
    free = ToolLoop("q", [lookup], 8, blocking=True, timeout=lmlink.Timeout(idle=7), kwargs={})
    assert free.kwargs() == {}  # no total: the calls keep their own timeout


# -- a stream's clock ----------------------------------------------------------------------------


def test_stream_deadline_starts_when_the_request_is_sent(api: API, server: FakeServer) -> None:
    """A stream made, then entered 1.5 s later with a 1 s total: its deadline counts from
    the request, so it completes (it used to be over before it began)."""
    timeout = lmlink.Timeout(idle=5, total=1.0)
    server.enqueue(Reply(content="on time"))
    if isinstance(api.client, lmlink.AsyncClient):
        client = api.client

        async def go() -> str:
            stream = client.stream("q", timeout=timeout)
            await asyncio.sleep(1.5)
            async with stream as s:
                return "".join([d async for d in s])

        text = api.run(go())
    else:
        stream = api.client.stream("q", timeout=timeout)
        time.sleep(1.5)
        with stream as s:
            text = "".join(s)
    assert text == "on time"


# -- closing from another event loop -------------------------------------------------------------


@pytest.fixture
def no_resource_warning() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_aclose_from_another_loop_while_the_clients_loop_idles(
    server: FakeServer, no_resource_warning: list[warnings.WarningMessage]
) -> None:
    """The client's loop is driven between calls (not running); closing the client from
    another loop closes its sockets, so closing that loop afterwards leaks none."""
    home = asyncio.new_event_loop()
    try:
        client = lmlink.AsyncClient(endpoint=server.url, model="fake-model", timeout=5)
        assert home.run_until_complete(client.chat("q")).content
        asyncio.run(client.aclose())
    finally:
        home.close()
    del client


def test_aclose_from_another_loop_while_the_clients_loop_runs_idle(
    server: FakeServer, no_resource_warning: list[warnings.WarningMessage]
) -> None:
    """The client's loop runs in a thread, idle; aclose() from another loop returns once
    that loop has closed the sockets."""
    home = asyncio.new_event_loop()
    thread = threading.Thread(target=home.run_forever, daemon=True)
    thread.start()
    try:
        client = lmlink.AsyncClient(endpoint=server.url, model="fake-model", timeout=5)
        answer = asyncio.run_coroutine_threadsafe(client.chat("q"), home).result(10)
        assert answer.content
        asyncio.run(client.aclose())
    finally:
        home.call_soon_threadsafe(home.stop)
        thread.join(10)
        home.close()
    del client

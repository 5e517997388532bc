"""EndpointPool: requests over several fake servers through real HTTP; servers that stop
answering are taken out, their requests finish elsewhere, and they rejoin."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from lmlink import APIConnectionError, AsyncClient, ChatResponse, InternalServerError
from lmlink.batch._pool import STRIKES, EndpointPool, endpoint_list
from lmlink.testing import FakeServer, RecordedRequest, Reply

MESSAGES = [{"role": "user", "content": "hi"}]


def _echo(req: RecordedRequest) -> str:
    return str(req.json["messages"][-1]["content"]).upper()


@pytest.fixture
def two() -> Iterator[tuple[FakeServer, FakeServer]]:
    with FakeServer(responder=_echo) as a, FakeServer(responder=_echo) as b:
        yield a, b


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _pool(*urls: str, ceiling: int | None = None) -> EndpointPool:
    clients = [AsyncClient(endpoint=u, model="fake-model", timeout=10, max_retries=0) for u in urls]
    return EndpointPool(clients, ceiling=ceiling)


async def _ask_all(pool: EndpointPool, n: int) -> list[ChatResponse | Any]:
    async def one(i: int) -> ChatResponse | Any:
        return await pool.ask([{"role": "user", "content": f"q{i}"}], model=None, params={})

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await pool.aclose()


def test_work_goes_to_every_endpoint_and_more_to_the_faster(
    two: tuple[FakeServer, FakeServer],
) -> None:
    """Both servers answer; the one that answers sooner does more of the work."""
    fast, slow = two
    slow.responder = lambda req: Reply(content=_echo(req), delay=0.05)
    pool = _pool(fast.url, slow.url, ceiling=4)
    results = asyncio.run(_ask_all(pool, 120))
    assert [r.content for r in results] == [f"Q{i}" for i in range(120)]
    a, b = pool.endpoints
    assert a.ok + b.ok == 120
    assert b.ok > 0
    assert a.ok > b.ok
    assert len(fast.requests) + len(slow.requests) == 120  # nothing sent twice


def test_refusing_endpoint_is_taken_out_and_items_finish_elsewhere(
    two: tuple[FakeServer, FakeServer],
) -> None:
    """Connections refused: the endpoint goes down at once, no item gets an error."""
    live, _ = two
    pool = _pool(_dead_url(), live.url)
    results = asyncio.run(_ask_all(pool, 30))
    assert all(isinstance(r, ChatResponse) for r in results)
    dead, ok = pool.endpoints
    assert dead.state == "down"
    assert dead.moved >= 1
    assert "APIConnectionError" in dead.last_error
    assert ok.ok == 30


def test_repeated_5xx_takes_an_endpoint_out(two: tuple[FakeServer, FakeServer]) -> None:
    """A server that answers only 500 is out after STRIKES failures; its items are answered
    by the other server."""
    good, bad = two
    bad.responder = lambda req: Reply.error(500, "broken")
    pool = _pool(good.url, bad.url, ceiling=2)
    results = asyncio.run(_ask_all(pool, 40))
    assert all(isinstance(r, ChatResponse) for r in results)
    assert pool.endpoints[1].state == "down"
    assert len(bad.requests) >= STRIKES
    assert pool.endpoints[0].ok == 40


def _server_process(port: int = 0) -> tuple[subprocess.Popen[str], str]:
    """The fake server in a process of its own (SIGKILL is a real crash); its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlink.testing", "--port", str(port), "--delay", "0.005"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[3]


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_server_killed_mid_run_loses_nothing_and_rejoins(
    two: tuple[FakeServer, FakeServer],
) -> None:
    """SIGKILL one server while requests are in flight: every item gets exactly one answer;
    the server is probed, rejoins once it runs again (same port), and takes work again."""
    a, _ = two
    a.responder = lambda req: Reply(content=_echo(req), delay=0.02)
    proc, url = _server_process()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    procs = [proc]

    async def scenario() -> tuple[list[Any], list[str], int]:
        pool = _pool(a.url, url, ceiling=4)
        states: list[str] = []
        pool._on_change = lambda e: states.append(f"{e.url}:{e.state}")
        try:
            first = asyncio.gather(
                *(
                    pool.ask([{"role": "user", "content": f"q{i}"}], model=None, params={})
                    for i in range(80)
                )
            )
            while pool.endpoints[1].ok < 5:
                await asyncio.sleep(0.005)
            assert pool.endpoints[1].limiter.in_flight > 0
            proc.kill()
            results = list(await first)
            procs.append(await asyncio.to_thread(lambda: _server_process(port)[0]))
            for _ in range(100):  # the probe waits 1 s, then 2 s
                if pool.endpoints[1].up:
                    break
                await asyncio.sleep(0.1)
            before = pool.endpoints[1].ok
            more = await asyncio.gather(
                *(pool.ask(MESSAGES, model=None, params={}) for _ in range(40))
            )
            return [*results, *more], states, pool.endpoints[1].ok - before
        finally:
            await pool.aclose()

    try:
        results, states, back_ok = asyncio.run(scenario())
    finally:
        for p in procs:
            _end(p)
    assert all(isinstance(r, ChatResponse) for r in results)
    assert len(results) == 120
    assert states == [f"{url}:down", f"{url}:up"]
    assert back_ok > 0


def test_every_endpoint_gone_raises(two: tuple[FakeServer, FakeServer]) -> None:
    """When the last endpoint refuses connections the error is raised, as with one server."""
    pool = _pool(_dead_url(), _dead_url())
    with pytest.raises(APIConnectionError):
        asyncio.run(_ask_all(pool, 5))


def test_one_endpoint_behaves_as_before(two: tuple[FakeServer, FakeServer]) -> None:
    """With one endpoint a 500 is that item's error and a refused connection is raised."""
    srv, _ = two
    srv.enqueue(Reply.error(500, "oops"))
    pool = _pool(srv.url)
    [result] = asyncio.run(_ask_all(pool, 1))
    assert isinstance(result, InternalServerError)
    with pytest.raises(APIConnectionError):
        asyncio.run(_ask_all(_pool(_dead_url()), 1))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, [None]),
        ("http://a/v1", ["http://a/v1"]),
        ("http://a/v1, http://b/v1,", ["http://a/v1", "http://b/v1"]),
        (["http://a/v1", "http://a/v1", "http://b/v1"], ["http://a/v1", "http://b/v1"]),
    ],
    ids=["none", "one", "comma-list", "list-deduplicated"],
)
def test_endpoint_list(given: Any, expected: list[str | None]) -> None:
    """Endpoints come as one URL, a comma-separated string or a list."""
    assert endpoint_list(given) == expected

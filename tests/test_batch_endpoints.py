"""One batch run over several servers (`-e A -e B`, LMLINK_ENDPOINT="A,B",
run_batch(endpoint=[...])): the work is shared, a server killed mid-run loses and
duplicates nothing, and the summary shows each server's part."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmlink
from batch_helpers import run_cli, write_jsonl
from lmlink import APIConnectionError
from lmlink.testing import FakeServer, RecordedRequest, Reply


def _lines(path: Path) -> list[dict[str, object]]:
    """The result lines (a line without an id, like a header, is not a result)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if "id" in r]


def _rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"t{i}", "prompt": f"p{i}"} for i in range(n)]


def _echo(req: RecordedRequest) -> Reply:
    return Reply(content=str(req.json["messages"][-1]["content"]).upper(), delay=0.005)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def two() -> Iterator[tuple[FakeServer, FakeServer]]:
    with FakeServer(responder=_echo) as a, FakeServer(responder=_echo) as b:
        yield a, b


def test_two_servers_share_one_run(two: tuple[FakeServer, FakeServer], tmp_path: Path) -> None:
    """Both servers answer, every id has exactly one line with its own answer, and the
    summary gives each server's share, rate and state."""
    a, b = two
    out = tmp_path / "out.jsonl"
    seen: list[lmlink.batch.Progress] = []
    summary = lmlink.run_batch(
        _rows(200), out, endpoint=[a.url, b.url], model="m", on_progress=seen.append
    )
    lines = _lines(out)
    assert sorted(r["id"] for r in lines) == sorted(f"t{i}" for i in range(200))
    assert all(r["content"] == f"P{str(r['id'])[1:]}" for r in lines)
    assert summary.ok == 200
    assert len(a.requests) > 0
    assert len(b.requests) > 0
    assert len(a.requests) + len(b.requests) == 200
    shares = {e.url: e for e in summary.endpoints}
    assert set(shares) == {a.url, b.url}
    assert shares[a.url].ok == len(a.requests)
    assert shares[b.url].ok == len(b.requests)
    assert all(e.state == "up" and e.items_s > 0 for e in shares.values())
    assert abs(sum(e.share for e in shares.values()) - 1) < 1e-9
    text = summary.describe()
    assert "2 endpoints:" in text
    assert f"{a.url} up: " in text
    assert seen[-1].final
    assert len(seen[-1].endpoints) == 2


def test_server_killed_mid_run_loses_and_duplicates_nothing(
    two: tuple[FakeServer, FakeServer], tmp_path: Path
) -> None:
    """One server is a process SIGKILLed while it holds requests: its items finish on the
    other server, no id gets an error or a second line, and the summary says it is down."""
    a, _ = two
    a.responder = lambda req: Reply(content="answer", delay=0.01)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlink.testing", "--port", "0", "--delay", "0.005"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        in_flight_at_kill: list[int] = []

        def watch(p: lmlink.batch.Progress) -> None:
            dying = [e for e in p.endpoints if e.url == url]
            if not in_flight_at_kill and dying and dying[0].ok >= 15 and dying[0].in_flight:
                in_flight_at_kill.append(dying[0].in_flight)
                proc.kill()

        out = tmp_path / "out.jsonl"
        summary = lmlink.run_batch(
            _rows(300), out, endpoint=[a.url, url], model="fake-model", on_progress=watch
        )
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert in_flight_at_kill
    assert in_flight_at_kill[0] > 0
    lines = _lines(out)
    counts = Counter(r["id"] for r in lines)
    assert sorted(counts) == sorted(f"t{i}" for i in range(300))
    assert set(counts.values()) == {1}
    assert [r for r in lines if "error" in r] == []
    assert summary.ok == 300
    assert summary.failed == 0
    states = {e.url: e.state for e in summary.endpoints}
    assert states == {a.url: "up", url: "down"}
    killed_ok = next(e.ok for e in summary.endpoints if e.url == url)
    assert killed_ok >= 15
    assert len(a.requests) + killed_ok == 300


def test_every_server_gone_stops_the_run(tmp_path: Path) -> None:
    """When no server answers the run stops with the connection error, as with one."""
    out = tmp_path / "out.jsonl"
    with pytest.raises(APIConnectionError):
        lmlink.run_batch(_rows(5), out, endpoint=[_dead_url(), _dead_url()], model="m")
    assert not out.exists()  # a run that got no answer leaves no file behind


def test_cli_repeated_endpoint_and_comma_list_in_env(
    two: tuple[FakeServer, FakeServer], tmp_path: Path
) -> None:
    """`-e A -e B` and LMLINK_ENDPOINT="A,B" both share one run among the servers; the
    summary lists them."""
    a, b = two
    src = write_jsonl(tmp_path / "in.jsonl", _rows(60))
    out1 = tmp_path / "one.jsonl"
    done = run_cli(
        [
            *("batch", str(src), "-o", str(out1), "-e", a.url, "-e", b.url),
            *("-m", "m", "--progress", "lines"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "2 endpoints:" in done.stderr
    assert f"{a.url} up: " in done.stderr
    assert f"{b.url} up: " in done.stderr
    host = a.url.split("//")[1].split("/")[0]
    progress = [line for line in done.stderr.splitlines() if line.startswith("lmlink: 60/60")]
    assert progress  # the last progress line gives each server's share, rate and state
    assert f"{host} " in progress[-1]
    assert "/s up" in progress[-1]
    assert len(_lines(out1)) == 60
    before = len(a.requests) + len(b.requests)
    out2 = tmp_path / "two.jsonl"
    done = run_cli(
        ["summarize", str(src), "-o", str(out2), "-m", "m", "--progress", "off"],
        LMLINK_ENDPOINT=f"{a.url},{b.url}",
    )
    assert done.returncode == 0, done.stderr
    assert "2 endpoints:" in done.stderr
    assert len(_lines(out2)) == 60
    assert len(a.requests) + len(b.requests) - before == 60

"""``lmlink demo``, the README's main command: classify the bundled tickets, against the
bundled test server (no terminal, as in CI) or a configured one."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from batch_helpers import read_jsonl, run_cli
from lmlink.cli._demo import LABELS, canned_label, tickets_path
from lmlink.testing import FakeServer, RecordedRequest, Reply

TICKETS = Path(__file__).resolve().parents[1] / "examples" / "tickets.jsonl"


def test_the_bundled_tickets_are_300_varied_rows() -> None:
    """examples/tickets.jsonl: 300 rows, ids T0001.., distinct texts, every label represented."""
    rows = read_jsonl(TICKETS)
    assert [r["id"] for r in rows] == [f"T{i:04d}" for i in range(1, 301)]
    assert len({r["text"] for r in rows}) == 300
    counts = Counter(canned_label(r["text"]) for r in rows)
    assert set(counts) == set(LABELS)
    assert min(counts.values()) >= 30
    assert tickets_path() == TICKETS


def test_demo_without_a_server_uses_the_canned_test_server(tmp_path: Path) -> None:
    """No LMLINK_ENDPOINT: a yellow CANNED banner, plain progress lines, the summary, 300 labels."""
    started = time.monotonic()
    result = run_cli(["demo"], cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "TEST SERVER" in result.stderr
    assert "CANNED" in result.stderr
    progress = [line for line in result.stderr.splitlines() if "items/s" in line]
    assert len(progress) >= 2
    assert progress[-1].startswith("lmlink: 300/300 (100%)")
    assert "lmlink classify: 300 items: 300 ok, 0 failed" in result.stderr
    assert "output: lmlink-demo-output.jsonl" in result.stderr
    assert "Tickets per label:" in result.stdout
    lines = read_jsonl(tmp_path / "lmlink-demo-output.jsonl")
    assert len(lines) == 300
    assert {line["label"] for line in lines} == set(LABELS)
    assert elapsed < 45


def test_demo_against_a_configured_server(tmp_path: Path) -> None:
    """With LMLINK_ENDPOINT set, the demo classifies through that server, into -o."""

    def respond(request: RecordedRequest) -> Reply:
        assert request.json["response_format"]["json_schema"]["schema"]["properties"]["label"][
            "enum"
        ] == list(LABELS)
        return Reply(content=json.dumps({"label": "other"}))

    with FakeServer(model="my-model", responder=respond) as server:
        out = tmp_path / "labels.jsonl"
        result = run_cli(
            ["demo", "-o", str(out)], LMLINK_ENDPOINT=server.url, LMLINK_MODEL="my-model"
        )
        assert result.returncode == 0, result.stderr
        assert f"Server: {server.url}" in result.stderr
        assert "CANNED" not in result.stderr
        assert server.stats.chat_requests == 300
        assert not server.errors
    assert {line["label"] for line in read_jsonl(out)} == {"other"}


def test_demo_exits_1_when_no_ticket_got_an_answer(tmp_path: Path) -> None:
    """A server whose every answer fails (here: never valid JSON) is not a successful demo:
    the summary shows the failures and the exit code is 1."""
    with FakeServer(model="m", responder=lambda r: Reply(content="I cannot do JSON.")) as server:
        out = tmp_path / "labels.jsonl"
        result = run_cli(["demo", "-o", str(out)], LMLINK_ENDPOINT=server.url, LMLINK_MODEL="m")
    assert result.returncode == 1, result.stderr
    assert "300 items: 0 ok, 300 failed" in result.stderr
    assert "no ticket got an answer" in result.stderr

"""Durability: the batch CLI, killed with SIGKILL at random moments over and over while a
faulty server answers, then re-run to the end. Every input id must be in the output exactly
once and every line must be valid JSON, at every step."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from batch_helpers import clean_env, lmlink_command, write_jsonl
from lmlink.batch._header import is_header
from lmlink.testing import FakeServer, Faults, RecordedRequest, Reply

ITEMS = 200
KILLS = 12
SEED = 20260523
PATIENCE = 120.0


def _answer(request: RecordedRequest) -> Reply:
    text = request.json["messages"][-1]["content"]
    # Long enough lines that a write could tear, paced so that a run takes seconds.
    return Reply(content=f"answer to {text}: " + "lorem ipsum " * 40, chunk_chars=120, delay=0.03)


def _check(out: Path, ids: set[str], *, final: bool) -> dict[str, Any]:
    """The output's invariants; a torn last line is allowed only before the final run."""
    data = out.read_bytes() if out.exists() else b""
    torn = not data.endswith(b"\n") and data != b""
    assert final is False or not torn
    lines = data.split(b"\n")
    complete = lines[:-1]
    seen: list[str] = []
    if complete and is_header(json.loads(complete[0])):
        complete = complete[1:]  # the header record, written once when the file is new
    for line in complete:
        record = json.loads(line)
        assert set(record) >= {"id"}
        assert ("error" in record) != ("content" in record)
        seen.append(record["id"])
    assert len(seen) == len(set(seen)), "an id appears twice"
    assert set(seen) <= ids
    return {"lines": len(seen), "torn": torn, "errors": sum(b'"error"' in x for x in complete)}


def _wait_until_sending(server: FakeServer, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the new run has sent a request (or ended): the random moment of the kill
    is counted from there, not from the start of Python, which a busy machine slows
    down a lot. Generous, so it only turns a hang into a failure."""
    before = server.live_stats.chat_requests
    deadline = time.monotonic() + PATIENCE
    while server.live_stats.chat_requests == before and proc.poll() is None:
        assert time.monotonic() < deadline, "the run sent nothing"
        time.sleep(0.01)


def test_sigkill_at_random_moments_never_loses_or_duplicates_a_result(tmp_path: Path) -> None:
    """~12 SIGKILLs at random points (fixed seed) + re-runs: each id exactly once, all valid."""
    rng = random.Random(SEED)
    rows = [{"id": f"d{i:03d}", "prompt": f"item {i}"} for i in range(ITEMS)]
    ids = {r["id"] for r in rows}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    faults = Faults(
        seed=SEED,
        p_503=0.04,
        p_429=0.04,
        retry_after=0,
        p_cut=0.03,
        p_malformed=0.02,
        p_error=0.02,
        p_stall=0.01,
    )
    started = time.monotonic()
    progress: list[int] = []
    with FakeServer(responder=_answer, faults=faults) as server:
        args = [
            "batch",
            str(src),
            "-o",
            str(out),
            "-e",
            server.url,
            "-m",
            "fake-model",
            "-c",
            "8",
            "--timeout",
            "1",
            "--progress",
            "off",
        ]
        kills = 0
        for _ in range(KILLS):
            proc = subprocess.Popen(
                [*lmlink_command(), *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
            )
            _wait_until_sending(server, proc)
            time.sleep(rng.uniform(0.1, 1.2))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(timeout=PATIENCE)
            state = _check(out, ids, final=False)
            progress.append(state["lines"])
        finish = subprocess.run(
            [*lmlink_command(), *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=PATIENCE * 2,
            check=False,
        )
        assert finish.returncode in (0, 3), finish.stderr  # 3: finished with error lines
        state = _check(out, ids, final=True)
        assert state["lines"] == ITEMS

        # Errors from the faults: --retry-errors, also killed a few times, then to the end.
        retry = [*args, "--retry-errors"]
        for _ in range(3):
            proc = subprocess.Popen(
                [*lmlink_command(), *retry],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
            )
            _wait_until_sending(server, proc)
            time.sleep(rng.uniform(0.05, 0.4))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(timeout=PATIENCE)
            _check(out, ids, final=False)
        server.faults = None
        # No faults now: a 1 s idle timeout would only measure how busy the machine is.
        calm = [*retry, "--timeout", "30"]
        again = subprocess.run(
            [*lmlink_command(), *calm],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=PATIENCE * 2,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        state = _check(out, ids, final=True)
        assert state["lines"] == ITEMS
        assert state["errors"] == 0
        faults_seen = server.stats.faults
    elapsed = time.monotonic() - started
    # The kills landed mid-run: the output grew across them, but not in one go.
    assert kills >= 10
    # (Which kill lands first depends on how fast the machine starts Python: ask only that
    # some landed between the first line and the last.)
    assert any(0 < p < ITEMS for p in progress), progress
    assert len(set(progress)) >= 4
    assert sum(faults_seen.values()) > 0
    print(
        f"\ndurability: {kills} kills, {ITEMS} items, lines after each kill {progress}, "
        f"faults {faults_seen}, {elapsed:.1f} s"
    )

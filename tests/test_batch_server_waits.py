"""A server that answers every request with 503 and a long Retry-After: the run waits as
asked, and the progress and the summary say that the server is why."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from batch_helpers import clean_env, lmlink_command, prompts, write_jsonl
from lmlink.batch._limiter import AdaptiveLimiter, Outcome
from lmlink.testing import FakeServer, Reply

# Generous limits that only turn a hang into a failure.
PATIENCE = 120.0


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put("")


def test_progress_and_summary_say_the_server_asks_to_wait(tmp_path: Path) -> None:
    """Every answer is 503 with Retry-After: 30. While nothing can be sent, the progress
    line says the server asks to wait (and how long); Ctrl-C then ends the run (130) and
    the summary says how often the server asked, and for how long at most."""
    busy = Reply.error(503, "busy", retry_after=30)
    with FakeServer(model="fake-model", default=busy) as server:
        src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
        out = tmp_path / "out.jsonl"
        args = ["batch", str(src), "-o", str(out), "-e", server.url, "-m", "fake-model"]
        proc = subprocess.Popen(
            [*lmlink_command(), *args, "--progress", "lines"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                line = lines.get(timeout=PATIENCE)
                seen.append(line)
                if not line or "server asks to wait" in line:
                    break
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=PATIENCE)
        finally:
            proc.kill()
        reader.join(PATIENCE)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
        while not lines.empty():
            seen.append(lines.get())
    stderr = "".join(seen)
    waiting = [line for line in seen if "server asks to wait" in line]
    assert waiting, stderr
    # The pause is the server's 30 s (less what has passed since): never more.
    wait_s = int(waiting[0].split("server asks to wait ")[1].split(" s")[0])
    assert 1 <= wait_s <= 30
    assert "(Retry-After)" in waiting[0]
    assert proc.returncode == 130, stderr
    assert stdout == ""
    assert "the server asked to wait" in stderr
    assert "up to 30.00 s each" in stderr
    assert "5 items: 0 ok, 0 failed, 5 not done" in stderr


def test_the_limiter_counts_retry_after_pauses() -> None:
    """Each 503 with a Retry-After pauses new requests (capped at 60 s); the limiter
    counts the pauses and keeps the longest, which the summary reports."""
    lim = AdaptiveLimiter(ceiling=4)
    ticket = lim.try_start(now=0.0)
    assert ticket is not None
    lim.finish(ticket, Outcome.OVERLOAD, now=1.0, retry_after=30.0)
    assert lim.wait_s(1.0) == 30.0
    assert lim.try_start(now=2.0) is None  # held back
    ticket = lim.try_start(now=31.0)
    assert ticket is not None
    lim.finish(ticket, Outcome.OVERLOAD, now=32.0, retry_after=600.0)
    assert lim.wait_s(32.0) == 60.0
    ticket = lim.try_start(now=92.0)
    assert ticket is not None
    lim.finish(ticket, Outcome.OVERLOAD, now=93.0)  # a 503 without Retry-After
    assert (lim.pauses, lim.longest_pause) == (2, 60.0)

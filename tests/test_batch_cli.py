"""``lmlink batch`` on the command line: through click's CliRunner, and as a real subprocess
(exit codes, stdout kept clean, Ctrl-C)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import lmlink
from batch_helpers import (
    clean_env,
    lmlink_command,
    prompts,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_output,
)
from lmlink.cli import main
from lmlink.testing import FakeServer, Reply


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


# Generous waits for a subprocess on a busy machine: they only turn a hang into a failure.
PATIENCE = 120.0


def _invoke(server: FakeServer, *args: str) -> Result:
    return CliRunner().invoke(main, ["batch", *args, "-e", server.url, "-m", "fake-model"])


def test_a_run_writes_the_output_and_a_summary_on_stderr(
    server: FakeServer, tmp_path: Path
) -> None:
    """Exit 0, nothing on stdout, the summary (counts, latency, output path) on stderr."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "lmlink batch: 5 items: 5 ok, 0 failed" in result.stderr
    assert "latency p50" in result.stderr
    assert f"output: {out}" in result.stderr
    assert len(read_jsonl(out)) == 5


INPUT_ERRORS = {
    "bad-json": (
        '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n',
        [],
        "line 2: not valid JSON",
    ),
    "missing-id": ('{"id": "a", "prompt": "x"}\n{"prompt": "y"}\n', [], 'line 2: no "id"'),
    "duplicate-id": (
        '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
        [],
        "line 2: duplicate id 'a' (first on line 1)",
    ),
    "non-string-id": ('{"id": 1, "prompt": "x"}\n', [], 'line 1: "id" must be a string'),
    "template-field": (
        '{"id": "a", "text": "x"}\n',
        ["--template", "{title}: {text}"],
        "line 1: the template needs field 'title'",
    ),
    "empty-file": ("", [], "no items: the input is empty"),
}


@pytest.mark.parametrize("case", list(INPUT_ERRORS), ids=list(INPUT_ERRORS))
def test_input_errors_exit_2_before_anything_is_sent(
    server: FakeServer, tmp_path: Path, case: str
) -> None:
    """Every input problem: exit 2, named with its line, no request, no output file."""
    text, extra, expected = INPUT_ERRORS[case]
    src = tmp_path / "in.jsonl"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _invoke(server, str(src), "-o", str(out), *extra)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "nothing was sent" in result.stderr
    assert server.stats.requests == 0
    assert not out.exists()


def test_csv_without_an_id_column_is_an_input_error(server: FakeServer, tmp_path: Path) -> None:
    """A CSV header without "id" is reported on line 1, with exit 2."""
    src = tmp_path / "in.csv"
    src.write_text("name,prompt\nx,hello\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 2
    assert "line 1: no 'id' column" in result.stderr
    assert server.stats.requests == 0
    assert not out.exists()


def test_csv_input_with_a_template_and_system(server: FakeServer, tmp_path: Path) -> None:
    """CSV rows render through --template; --system comes first."""
    src = tmp_path / "in.csv"
    src.write_text("id,name\nr1,Ada\nr2,Linus\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _invoke(
        server, str(src), "-o", str(out), "--template", "Greet {name}", "--system", "Be warm."
    )
    assert result.exit_code == 0, result.stderr
    sent = sorted(r.json["messages"][-1]["content"] for r in server.requests)
    assert sent == ["Greet Ada", "Greet Linus"]
    assert server.requests[0].json["messages"][0] == {"role": "system", "content": "Be warm."}


def test_stdin_input(server: FakeServer, tmp_path: Path) -> None:
    """INPUT '-' reads JSONL from stdin."""
    out = tmp_path / "out.jsonl"
    stdin = "".join(json.dumps(r) + "\n" for r in prompts(3))
    result = CliRunner().invoke(
        main, ["batch", "-", "-o", str(out), "-e", server.url, "-m", "fake-model"], input=stdin
    )
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 3


def test_resume_sends_only_the_missing_ids(server: FakeServer, tmp_path: Path) -> None:
    """Re-running the same command skips what is done; the summary says so."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    out = tmp_path / "out.jsonl"
    earlier = {"content": "earlier", "finish_reason": "stop"}
    write_output(out, [{"id": "p001", **earlier}, {"id": "p004", **earlier}])
    result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert server.stats.chat_requests == 4
    assert "(2 already done, 4 to run)" in result.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == [f"p{i:03d}" for i in range(6)]


def test_retry_errors_redoes_only_error_lines(server: FakeServer, tmp_path: Path) -> None:
    """--retry-errors sends the error ids again and replaces their lines."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    write_output(
        out,
        [
            {"id": "p000", "content": "fine"},
            {
                "id": "p001",
                "error": {"type": "APITimeoutError", "message": "x", "status_code": None},
            },
            {"id": "p002", "content": "fine"},
        ],
    )
    plain = _invoke(server, str(src), "-o", str(out))
    assert plain.exit_code == 3  # done, but one id has only an error line
    assert "1 id has an error line; run the same command with --retry-errors" in plain.stderr
    assert server.stats.chat_requests == 0
    result = _invoke(server, str(src), "-o", str(out), "--retry-errors")
    assert result.exit_code == 0, result.stderr
    assert server.stats.chat_requests == 1
    assert "running 1 error lines again" in result.stderr
    lines = read_jsonl(out)
    assert len(lines) == 3
    assert all("error" not in line for line in lines)


def test_cache_makes_a_rerun_send_nothing(server: FakeServer, tmp_path: Path) -> None:
    """--cache: the second run into a fresh output sends zero requests."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(7))
    cache = tmp_path / "c.sqlite"
    assert (
        _invoke(server, str(src), "-o", str(tmp_path / "a.jsonl"), "--cache", str(cache)).exit_code
        == 0
    )
    server.reset()
    result = _invoke(server, str(src), "-o", str(tmp_path / "b.jsonl"), "--cache", str(cache))
    assert result.exit_code == 0, result.stderr
    assert server.stats.requests == 0
    assert "7 from the cache" in result.stderr
    assert len(read_jsonl(tmp_path / "b.jsonl")) == 7


def test_error_lines_exit_3_and_are_counted_by_type(server: FakeServer, tmp_path: Path) -> None:
    """A finished run with error lines exits 3, counts them by type and says how to redo
    them."""
    server.enqueue(Reply.error(400, "bad one"), Reply.error(422, "worse one"))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    result = _invoke(server, str(src), "-o", str(tmp_path / "out.jsonl"), "-c", "1")
    assert result.exit_code == 3, result.stderr
    assert "2 ids have an error line; run the same command with --retry-errors" in result.stderr
    assert "2 ok, 2 failed" in result.stderr
    assert "errors: BadRequestError 2" in result.stderr


def test_a_torn_last_line_is_repaired_with_a_warning(server: FakeServer, tmp_path: Path) -> None:
    """A half-written last line from a killed run is cut off, reported, and that id redone."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    write_output(out, [{"id": "p000", "content": "ok", "finish_reason": "stop"}])
    with out.open("a") as torn:
        torn.write('{"id": "p001", "cont')
    result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "torn line" in result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["p000", "p001"]


def test_an_output_that_is_not_batch_output_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """Pointing -o at some other file is exit 2, and the file is left alone."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 2
    assert "not an lmlink result line" in result.stderr
    assert out.read_text() == "my notes\n"


def test_the_input_cannot_be_the_output(server: FakeServer, tmp_path: Path) -> None:
    """-o equal to INPUT is a usage error."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    result = _invoke(server, str(src), "-o", str(src))
    assert result.exit_code == 2
    assert "is the input file" in result.stderr


def test_help_lists_the_batch_commands() -> None:
    """lmlink --help shows batch, classify, summarize and extract; batch --help its options."""
    top = CliRunner().invoke(main, ["--help"])
    for name in ("batch", "classify", "summarize", "extract", "demo"):
        assert name in top.stdout
    sub = CliRunner().invoke(main, ["batch", "--help"])
    for option in (
        "--output",
        "--concurrency",
        "--template",
        "--cache",
        "--retry-errors",
        "--progress",
    ):
        assert option in sub.stdout


# -- as a real process ------------------------------------------------------------------------


def test_subprocess_no_server_exits_1(tmp_path: Path) -> None:
    """With nothing listening, the run stops at once: exit 1, one clear line without class
    names, and no output file left behind."""
    with FakeServer() as gone:
        url = gone.url
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    result = run_cli(["batch", str(src), "-o", str(out), "-e", url, "-m", "m"])
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("lmlink: could not connect to 127.0.0.1:")
    assert line.endswith("connection refused (is the server running?); nothing was written")
    assert "Error" not in line
    assert result.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_subprocess_no_endpoint_exits_1(tmp_path: Path) -> None:
    """No -e, no LMLINK_ENDPOINT, discovery off: exit 1 saying how to name a server."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = run_cli(["batch", str(src), "-o", str(tmp_path / "out.jsonl"), "-m", "m"])
    assert result.returncode == 1
    assert "LMLINK_ENDPOINT" in result.stderr


def test_subprocess_plain_progress_lines_and_clean_stdout(
    server: FakeServer, tmp_path: Path
) -> None:
    """Without a terminal, progress is plain lines on stderr; stdout stays empty."""
    server.responder = lambda r: Reply(content="ok", delay=0.04)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(100))
    out = str(tmp_path / "out.jsonl")
    result = run_cli(
        [
            "batch",
            str(src),
            "-o",
            out,
            "-e",
            server.url,
            "-m",
            "fake-model",
            "-c",
            "2",
            "--no-stream",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if "items/s" in line]
    assert len(lines) >= 2
    assert lines[-1].startswith("lmlink: 100/100 (100%)")


@pytest.mark.parametrize(
    ("signals", "code"),
    [
        ([signal.SIGINT], 130),
        ([signal.SIGINT] * 4, 130),  # impatient presses must not break the clean-up
        ([signal.SIGTERM], 143),
    ],
    ids=["ctrl-c", "ctrl-c-x4", "sigterm"],
)
def test_subprocess_signal_stops_cleanly(
    server: FakeServer, tmp_path: Path, signals: list[int], code: int
) -> None:
    """SIGINT or SIGTERM, once or pressed again and again, cancels the requests in flight,
    prints a summary that matches the lines written, exits 128 + the signal number (never
    hangs), and a re-run finishes."""
    server.responder = lambda r: Reply(content="one two three four", chunk_chars=3, delay=0.05)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(200))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "-e", server.url, "-m", "fake-model", "-c", "8"]
    proc = subprocess.Popen(
        [*lmlink_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        # Ready: the run has written a result (its signal handlers are in place) and has
        # requests in flight. Waited for, however slow a busy machine makes it.
        def in_flight() -> int:
            s = server.live_stats
            return s.streams_started - s.streams_completed - s.client_disconnects

        def ready() -> bool:
            written = out.exists() and out.read_bytes().count(b"\n") >= 2
            return written and in_flight() > 0

        assert server.wait_for(ready, timeout=PATIENCE)
        assert proc.poll() is None, "the run ended before it was interrupted"
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert stdout == ""
    assert "lmlink: interrupted" in stderr
    assert "Traceback" not in stderr
    done = read_jsonl(out)  # every line whole and valid
    assert 0 < len(done) < 200
    assert len({r["id"] for r in done}) == len(done)
    assert f"lmlink batch: 200 items: {len(done)} ok" in stderr
    server.wait_for(lambda: server.live_stats.active_connections == 0, timeout=PATIENCE)
    server.responder = None
    again = run_cli(args, timeout=PATIENCE)
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == [f"p{i:03d}" for i in range(200)]


def test_a_second_run_on_the_same_output_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """While another run holds the output, a second one exits 1 and sends nothing."""
    from lmlink.batch._journal import Journal

    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    with Journal.open(out):
        result = _invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 1
    assert "being written by another lmlink run" in result.stderr
    assert server.stats.requests == 0

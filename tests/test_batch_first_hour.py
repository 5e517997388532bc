"""What a new user meets on the command line, and failures that used to stop or mislead a
batch: exit codes, a stderr that goes away, the item deadline, error lines that keep the
model's answer, the offline test server answering every README command."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmlink
from batch_helpers import clean_env, lmlink_command, prompts, read_jsonl, run_cli, write_jsonl
from lmlink.batch import run_batch
from lmlink.testing import FakeServer, Reply, sensible_reply

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-first-hour-key-0123456789"


# -- 6. stderr going away never stops the batch ------------------------------------------------


def _paced(request: object) -> Reply:
    return Reply(content="an answer", delay=0.02)


@pytest.mark.parametrize("how", ["reader-exits", "closed"])
def test_a_lost_stderr_never_stops_the_batch(tmp_path: Path, how: str) -> None:
    """Progress on a pipe whose reader exits (``| head``), or no stderr at all: the writes
    that fail are dropped, every item gets its line, and the exit code is the results'."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(400))
    out = tmp_path / "out.jsonl"
    with FakeServer(responder=_paced) as server:
        args = [*lmlink_command(), "batch", str(src), "-o", str(out), "-c", "4"]
        args += ["-e", server.url, "-m", "fake-model", "--progress", "lines"]
        if how == "closed":
            command = " ".join(map(shlex.quote, args)) + " 2>&-"
            proc = subprocess.run(["sh", "-c", command], env=clean_env(), timeout=120, check=False)
            code = proc.returncode
        else:
            with subprocess.Popen(args, stderr=subprocess.PIPE, env=clean_env()) as running:
                assert running.stderr is not None
                assert running.stderr.readline().startswith(b"lmlink: 400 items from")
                running.stderr.close()  # the reader is gone: the next write gets EPIPE
                code = running.wait(timeout=120)
    assert code == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == [f"p{i:03d}" for i in range(400)]


# -- 7. the item's deadline bounds the runner's own retries -----------------------------------


def _bounded(fn: object, guard: float = 60) -> object:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), "the run outlived its deadline by far"
    return result[0]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_a_long_retry_after_is_not_waited_past_the_deadline(tmp_path: Path, stream: bool) -> None:
    """503 + ``Retry-After: 100`` with ``Timeout(total=2)``: no wait that would pass the
    deadline; each item ends with its 503 after one request."""
    out = tmp_path / "out.jsonl"
    busy = Reply.error(503, "busy", retry_after=100)
    with FakeServer(responder=lambda r: busy) as server:
        summary = _bounded(
            lambda: run_batch(
                prompts(3),
                out,
                endpoint=server.url,
                model="fake-model",
                timeout=lmlink.Timeout(total=2),
                stream=stream,
            )
        )
        assert server.stats.chat_requests == 3
    assert summary.failed == 3  # type: ignore[attr-defined]
    assert {r["error"]["type"] for r in read_jsonl(out)} == {"OverloadedError"}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_an_attempt_after_a_retry_ends_at_the_items_deadline(tmp_path: Path, stream: bool) -> None:
    """After a 1.2 s Retry-After, the next attempt (a slow answer) is cut when the item's
    2 s are up, not 2 s after that attempt began."""
    out = tmp_path / "out.jsonl"
    with FakeServer() as server:
        server.enqueue(Reply.error(503, "busy", retry_after=1.2), Reply(content="late", delay=30))
        _bounded(
            lambda: run_batch(
                prompts(1),
                out,
                endpoint=server.url,
                model="fake-model",
                timeout=lmlink.Timeout(total=2),
                stream=stream,
            )
        )
        assert server.stats.chat_requests == 2
    [line] = read_jsonl(out)
    assert line["error"]["type"] == "APITimeoutError"
    assert line["error"]["message"] == "the item's total timeout of 2 s passed"


# -- 9. exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["classify", "extract"])
def test_every_item_failed_exits_3_and_says_how_to_redo(tmp_path: Path, command: str) -> None:
    """A finished run with error lines exits 3 (0 only when every id has an answer), and
    the summary names --retry-errors; the error lines keep the model's text, key blanked."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"x{i}", "text": "hello"} for i in range(3)])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    out = tmp_path / "out.jsonl"
    option = ["--labels", "a,b"] if command == "classify" else ["--schema", str(schema)]

    def answer(request: object) -> Reply:
        return Reply(content=f"Sorry, no JSON today (my key is {KEY}).")

    with FakeServer(api_key=KEY, responder=answer) as server:
        args = [command, str(src), "-o", str(out), *option, "-e", server.url, "-m", "m"]
        result = run_cli(args, LMLINK_API_KEY=KEY)
    assert result.returncode == 3, result.stderr
    assert "3 ids have an error line; run the same command with --retry-errors" in result.stderr
    for line in read_jsonl(out):
        assert line["error"]["type"] == "StructuredOutputError"
        assert line["error"]["raw"] == "Sorry, no JSON today (my key is ***)."
    assert KEY not in out.read_text() + result.stderr


def test_lmlink_help_documents_exit_codes_and_the_test_server() -> None:
    """``lmlink --help`` and ``lmlink batch --help`` say how to try it offline and what
    each exit code means."""
    top = run_cli(["--help"])
    assert "python -m lmlink.testing" in top.stdout
    batch = run_cli(["batch", "--help"])
    text = " ".join(batch.stdout.split())
    assert "3 when some have only an error line" in text
    assert "--allow-changed-settings" in text


# -- the first hour ----------------------------------------------------------------------------


@pytest.fixture
def offline(request: pytest.FixtureRequest) -> Iterator[str]:
    """``python -m lmlink.testing --port 0`` as a user would start it (in the dialect of
    an indirect parameter); yields its URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    dialect = getattr(request, "param", "openai")
    cmd = [sys.executable, "-m", "lmlink.testing", "--port", "0", "--dialect", dialect]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            yield proc.stdout.readline().split()[3]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _readme_block(title: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(title, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("lmlink ")]


def test_every_readme_batch_command_works_against_the_offline_server(
    offline: str, tmp_path: Path
) -> None:
    """The README's batch commands, word for word, against ``python -m lmlink.testing``:
    every item answered, labels from the list, extracted fields shaped by the schema."""
    write_jsonl(
        tmp_path / "tickets.jsonl",
        [
            {"id": "t1", "text": "My card was charged twice"},
            {"id": "t2", "text": "The app crashes on start"},
            {"id": "t3", "text": "What a lovely day"},
        ],
    )
    write_jsonl(tmp_path / "prompts.jsonl", prompts(4))
    (tmp_path / "notes.csv").write_text("id,title,body\nn1,Plan,Ship it on Friday\n")
    write_jsonl(tmp_path / "invoices.jsonl", [{"id": "i1", "text": "ACME invoice, total 42 EUR"}])
    schema = {
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
        "required": ["vendor", "total"],
    }
    (tmp_path / "invoice.schema.json").write_text(json.dumps(schema))
    commands = _readme_block("## Batch runs that survive crashes")
    assert len(commands) == 4
    for line in commands:
        result = run_cli([*shlex.split(line)[1:], "-e", offline], cwd=tmp_path)
        assert result.returncode == 0, (line, result.stderr)
    labels = {r["id"]: r["label"] for r in read_jsonl(tmp_path / "labels.jsonl")}
    assert labels == {"t1": "billing", "t2": "bug", "t3": "other"}
    assert len(read_jsonl(tmp_path / "answers.jsonl")) == 4
    assert read_jsonl(tmp_path / "summaries.jsonl")[0]["content"]
    [fields] = read_jsonl(tmp_path / "fields.jsonl")
    assert fields["parsed"]["total"] == 42
    assert isinstance(fields["parsed"]["vendor"], str)


@pytest.mark.parametrize("offline", ["openai", "ollama", "tgi"], indirect=True)
def test_chat_and_models_work_against_the_offline_server(offline: str, tmp_path: Path) -> None:
    """``lmlink chat``, ``chat --json``, ``chat --schema`` and ``lmlink models`` against
    ``python -m lmlink.testing``: answers of the asked shape, exit 0."""
    from lmlink.testing import CANNED_REPLY

    chat = run_cli(["chat", "Say hi", "-e", offline])
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == CANNED_REPLY
    as_json = run_cli(["chat", "Say hi", "--json", "-e", offline])
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"answer": CANNED_REPLY}
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    shaped = run_cli(["chat", "I have 7 cats", "--schema", str(schema), "-e", offline])
    assert shaped.returncode == 0, shaped.stderr
    assert json.loads(shaped.stdout) == {"n": 7}
    listed = run_cli(["models", "-e", offline])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["fake-model"]


def test_the_readme_tells_how_to_run_the_offline_server() -> None:
    """README shows the shell command for the test server and the exit codes."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python -m lmlink.testing" in readme
    codes = " ".join(readme.split("**Exit codes**", 1)[1].split()[:40])
    assert re.search(r"0 every id has an answer; 3 the run finished", codes)
    assert "--allow-changed-settings" in readme


def test_sensible_answers_fit_any_schema_shape(tmp_path: Path) -> None:
    """Nested objects, arrays, enums, integers and booleans come back valid."""
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["refund", "shipping"]},
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "meta": {"type": "object", "properties": {"urgent": {"type": "boolean"}}},
            "note": {"type": ["string", "null"]},
        },
        "required": ["kind", "items", "meta", "note"],
        "additionalProperties": False,
    }
    with FakeServer(responder=sensible_reply) as server:
        client = lmlink.Client(endpoint=server.url, model="fake-model")
        resp = client.chat("Where is my shipping box with 3 cups?", response_format=schema)
        client.close()
    assert resp.parsed == {
        "kind": "shipping",
        "items": [3, 3],
        "meta": {"urgent": False},
        "note": "Where is my shipping box with",
    }


def test_the_404_hint_names_the_command_not_the_method(tmp_path: Path) -> None:
    """On the command line a wrong model is answered with ``lmlink models``, not with
    ``client.models()``, by chat and by batch (one line, nothing left behind)."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    missing = Reply.error(404, "model 'nope' not found")
    with FakeServer(responder=lambda r: missing) as server:
        chat = run_cli(["chat", "hi", "-e", server.url, "-m", "nope"])
        batch = run_cli(["batch", str(src), "-o", str(out), "-e", server.url, "-m", "nope"])
    for result in (chat, batch):
        assert result.returncode == 1
        assert "`lmlink models`" in result.stderr
        assert "client.models()" not in result.stderr
    assert len(batch.stderr.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", [["batch", "IN", "-o", "OUT"], ["chat", "hi"], ["models"]])
def test_a_negative_timeout_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    """``--timeout -5`` exits 2 like every other bad option value."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    args = [
        str(src) if a == "IN" else str(tmp_path / "o.jsonl") if a == "OUT" else a for a in command
    ]
    result = run_cli([*args, "--timeout", "-5", "-e", "http://127.0.0.1:9/v1"])
    assert result.returncode == 2
    assert "--timeout" in result.stderr


def test_a_run_served_from_the_cache_reports_no_token_rate(tmp_path: Path) -> None:
    """Every answer from the cache: no "0 tok/s" in the progress or the summary."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    cache = ["--cache", str(tmp_path / "c.sqlite"), "--progress", "lines"]
    with FakeServer() as server:
        server_args = ["-e", server.url, "-m", "fake-model"]
        first = run_cli(["batch", str(src), "-o", str(tmp_path / "a.jsonl"), *cache, *server_args])
        assert "tok/s" in first.stderr
        again = run_cli(["batch", str(src), "-o", str(tmp_path / "b.jsonl"), *cache, *server_args])
    assert again.returncode == 0, again.stderr
    assert "3 from the cache" in again.stderr
    assert "every answer from the cache" in again.stderr
    assert "tok/s" not in again.stderr


def test_chat_json_fails_like_chat_schema(tmp_path: Path) -> None:
    """An answer that is not JSON: ``chat --json`` and ``chat --schema`` both exit 1 with
    the same one line on stderr (the text the model streamed stays on stdout)."""
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object"}))
    with FakeServer(responder=lambda r: Reply(content="not json at all")) as server:
        base = ["chat", "q", "-e", server.url, "-m", "fake-model"]
        as_json = run_cli([*base, "--json"])
        as_schema = run_cli([*base, "--schema", str(schema)])
    for result in (as_json, as_schema):
        assert result.returncode == 1
        assert result.stdout == "not json at all\n"
        [line] = result.stderr.splitlines()
        assert line.startswith("lmlink: the model's output does not match the requested schema")
    assert as_json.stderr == as_schema.stderr

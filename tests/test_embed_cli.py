"""``lmlink embed`` and ``lmlink.batch.run_embed``: vectors of a file into a crash-safe,
resumable JSONL output, on the batch runner's machinery; through CliRunner and as a real
subprocess (exit codes, kills, signals)."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import lmlink
import lmlink.batch
from batch_helpers import clean_env, lmlink_command, read_header, read_jsonl, write_jsonl
from lmlink.cli import main
from lmlink.testing import EmbedSettings, FakeServer, Reply, embedding_of


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def texts(n: int, prefix: str = "d") -> list[dict[str, str]]:
    """``n`` rows ``{"id": "d000", "text": "document 0"}``..."""
    return [{"id": f"{prefix}{i:03d}", "text": f"document {i}"} for i in range(n)]


def invoke(server: FakeServer, *args: str) -> Result:
    return CliRunner().invoke(main, ["embed", *args, "-e", server.url, "-m", "embedder"])


def vectors(path: Path) -> dict[str, list[float]]:
    """The vectors of an output, by id (every id once)."""
    rows = read_jsonl(path)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id with two lines"
    return {r["id"]: r["embedding"] for r in rows if "embedding" in r}


def embed_requests(server: FakeServer) -> list[Any]:
    return [r for r in server.requests if r.path == "/v1/embeddings"]


def test_a_run_writes_one_vector_per_id(server: FakeServer, tmp_path: Path) -> None:
    """Exit 0, nothing on stdout; each id's line holds its text's vector; inputs go
    --batch-size per request; the header marks an embeddings output."""
    src = write_jsonl(tmp_path / "in.jsonl", texts(10))
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "lmlink embed: 10 items: 10 ok, 0 failed" in result.stderr
    assert "tok/s" not in result.stderr  # nothing is generated: no "0 tok/s" on any line
    assert "items/s" in result.stderr
    got = vectors(out)
    assert got == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(10)}
    sizes = sorted(len(r.json["input"]) for r in embed_requests(server))
    assert sizes == [2, 4, 4]
    header = read_header(out)
    assert header["lmlink"] == "embed-output"
    assert header["settings"]["task"] == "embed"
    assert header["settings"]["model"] == "embedder"


def test_template_csv_and_dimensions(server: FakeServer, tmp_path: Path) -> None:
    """CSV rows through --template; --dimensions goes into every request and the header."""
    src = tmp_path / "in.csv"
    src.write_text("id,title,body\nr1,Cats,purr\nr2,Dogs,bark\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = invoke(
        server, str(src), "-o", str(out), "--template", "{title}: {body}", "--dimensions", "3"
    )
    assert result.exit_code == 0, result.stderr
    assert vectors(out) == {
        "r1": embedding_of("Cats: purr", 3),
        "r2": embedding_of("Dogs: bark", 3),
    }
    assert embed_requests(server)[0].json["dimensions"] == 3
    assert read_header(out)["settings"]["params"] == {"dimensions": 3}


def test_chat_parameter_columns_are_data(server: FakeServer, tmp_path: Path) -> None:
    """Columns named like a chat row's parameters (``model``, ``temperature``) are data in
    an embeddings input: no input error, and every request uses the run's model."""
    src = tmp_path / "in.csv"
    src.write_text(
        "id,model,temperature,text\np1,iPhone 12,hot,A phone\np2,Pixel,cold,Another\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--template", "{model}: {text}")
    assert result.exit_code == 0, result.stderr
    assert vectors(out) == {
        "p1": embedding_of("iPhone 12: A phone"),
        "p2": embedding_of("Pixel: Another"),
    }
    assert {r.json["model"] for r in embed_requests(server)} == {"embedder"}


def test_stdin_input(server: FakeServer, tmp_path: Path) -> None:
    """INPUT "-" reads JSONL from standard input."""
    out = tmp_path / "out.jsonl"
    stdin = "".join(json.dumps(row) + "\n" for row in texts(3))
    result = CliRunner().invoke(
        main, ["embed", "-", "-o", str(out), "-e", server.url, "-m", "embedder"], input=stdin
    )
    assert result.exit_code == 0, result.stderr
    assert vectors(out) == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(3)}


def test_bad_input_line_exits_2_before_sending(server: FakeServer, tmp_path: Path) -> None:
    """A row without text: exit 2, named with its line, nothing sent, no output file."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "x"}\n{"id": "b", "title": "y"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 2
    assert 'line 2: nothing to send: give "text" or "prompt"' in result.stderr
    assert server.stats.requests == 0
    assert not out.exists()


def test_one_bad_input_does_not_fail_its_group(server: FakeServer, tmp_path: Path) -> None:
    """A request refused because of one input is split until only that input gets an
    error line (exit 3); --retry-errors redoes it once the server takes it (exit 0)."""
    server.embed = EmbedSettings(fail_on="POISON")
    rows = texts(32)
    rows[13]["text"] = "POISON pill"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "32")
    assert result.exit_code == 3, result.stderr
    lines = {r["id"]: r for r in read_jsonl(out)}
    assert lines["d013"]["error"]["type"] == "ContextLengthError"
    assert lines["d013"]["error"]["status_code"] == 400
    assert len(vectors(out)) == 31
    # Halving isolates one input in log2(32) rounds: 1 + 2 * 5 requests, not 32.
    assert len(embed_requests(server)) == 11
    server.embed = EmbedSettings()
    again = invoke(server, str(src), "-o", str(out), "--retry-errors")
    assert again.exit_code == 0, again.stderr
    assert vectors(out)["d013"] == embedding_of("POISON pill")
    assert len(vectors(out)) == 32


def test_a_group_that_fails_for_the_server_is_not_split(server: FakeServer, tmp_path: Path) -> None:
    """An answer that is not JSON (the server, not an input) gives every item of the group
    an error line after one request; --retry-errors finishes them."""
    server.enqueue_embeddings(Reply(body_override=b'{"data": [tru'))
    src = write_jsonl(tmp_path / "in.jsonl", texts(4))
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "4")
    assert result.exit_code == 3, result.stderr
    assert len(embed_requests(server)) == 1
    errors = [r for r in read_jsonl(out) if "error" in r]
    assert {r["error"]["type"] for r in errors} == {"DecodeError"}
    assert len(errors) == 4
    assert invoke(server, str(src), "-o", str(out), "--retry-errors").exit_code == 0
    assert len(vectors(out)) == 4


def test_a_server_batch_limit_is_learned(server: FakeServer, tmp_path: Path) -> None:
    """TEI's 422 "maximum allowed batch size 8": the group is resent 8 at a time and later
    groups keep to 8; every id gets its vector, no error line (exit 0)."""
    server.embed = EmbedSettings(max_batch=8)
    src = write_jsonl(tmp_path / "in.jsonl", texts(100))
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "32", "-c", "1")
    assert result.exit_code == 0, result.stderr
    assert vectors(out) == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(100)}
    sizes = [len(r.json["input"]) for r in embed_requests(server)]
    refused = [n for n in sizes if n > 8]
    assert all(n <= 8 for n in sizes if n not in refused)
    # Only the groups taken before the limit was known were refused (one per worker).
    assert 1 <= len(refused) <= 4
    assert sum(n for n in sizes if n <= 8) == 100


def test_a_413_halves_later_groups(server: FakeServer, tmp_path: Path) -> None:
    """A 413 (request too large) sends that group in halves, and the groups taken after it
    are halved too; every id gets its vector."""
    server.enqueue_embeddings(Reply.error(413, "Payload Too Large"))
    src = write_jsonl(tmp_path / "in.jsonl", texts(200))
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "32", "-c", "1")
    assert result.exit_code == 0, result.stderr
    assert len(vectors(out)) == 200
    sizes = [len(r.json["input"]) for r in embed_requests(server)]
    assert sizes[0] == 32
    assert sum(sizes[1:]) == 200
    # At most the groups the workers held before the 413 go out whole (4 at -c 1).
    assert sizes.count(32) <= 4
    assert sizes[-1] <= 16


def test_torn_last_line_is_repaired_and_resumed(server: FakeServer, tmp_path: Path) -> None:
    """A journal cut in the middle of a line (a crash): the torn line is removed, only the
    missing ids are sent, and every id ends with its vector once."""
    src = write_jsonl(tmp_path / "in.jsonl", texts(6))
    out = tmp_path / "out.jsonl"
    assert invoke(server, str(src), "-o", str(out), "--batch-size", "2").exit_code == 0
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    kept = b"".join(lines[:4])  # the header and three results
    out.write_bytes(kept + lines[4][: len(lines[4]) // 2])
    server.reset()
    result = invoke(server, str(src), "-o", str(out), "--batch-size", "8")
    assert result.exit_code == 0, result.stderr
    assert "torn line" in result.stderr
    assert "3 already done, 3 to run" in result.stderr
    sent = [t for r in embed_requests(server) for t in r.json["input"]]
    assert sorted(sent) == ["document 3", "document 4", "document 5"]
    assert vectors(out) == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(6)}


def test_changed_settings_are_refused(server: FakeServer, tmp_path: Path) -> None:
    """Other dimensions, or another model, than the output's: exit 2 naming the change,
    nothing sent; --allow-changed-settings adds to it anyway."""
    src = write_jsonl(tmp_path / "in.jsonl", texts(3))
    out = tmp_path / "out.jsonl"
    partial = write_jsonl(tmp_path / "part.jsonl", texts(2))
    assert invoke(server, str(partial), "-o", str(out), "--dimensions", "4").exit_code == 0
    server.reset()
    result = invoke(server, str(src), "-o", str(out), "--dimensions", "5")
    assert result.exit_code == 2
    assert "dimensions '4' -> '5'" in result.stderr
    assert not embed_requests(server)
    allowed = invoke(
        server, str(src), "-o", str(out), "--dimensions", "5", "--allow-changed-settings"
    )
    assert allowed.exit_code == 0, allowed.stderr
    assert len(vectors(out)) == 3


def test_batch_and_embed_refuse_each_others_files(server: FakeServer, tmp_path: Path) -> None:
    """``lmlink batch`` on an embeddings output, and ``lmlink embed`` on a chat output,
    exit 2 and leave the file as it was, even with --allow-changed-settings."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "hi", "text": "hi"}])
    vectors_out = tmp_path / "vectors.jsonl"
    answers_out = tmp_path / "answers.jsonl"
    assert invoke(server, str(src), "-o", str(vectors_out)).exit_code == 0
    chat = CliRunner().invoke(
        main, ["batch", str(src), "-o", str(answers_out), "-e", server.url, "-m", "embedder"]
    )
    assert chat.exit_code == 0, chat.stderr
    before = vectors_out.read_bytes(), answers_out.read_bytes()
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "b", "prompt": "x", "text": "x"}])
    cross = CliRunner().invoke(
        main,
        ["batch", str(more), "-o", str(vectors_out), "-e", server.url, "--allow-changed-settings"],
    )
    assert cross.exit_code == 2
    assert "is an output of `lmlink embed`" in cross.stderr
    back = invoke(server, str(more), "-o", str(answers_out), "--allow-changed-settings")
    assert back.exit_code == 2
    assert "is an output of `lmlink batch`" in back.stderr
    assert (vectors_out.read_bytes(), answers_out.read_bytes()) == before


@pytest.mark.parametrize("refusal", ["llamacpp", "vllm"])
def test_a_server_that_does_not_embed_stops_the_run(
    server: FakeServer, tmp_path: Path, refusal: Any
) -> None:
    """A chat-only model (llama-server's 501, vLLM's 400): exit 1 with one line, nothing
    written, and no splitting into one request per input."""
    server.embed = EmbedSettings(models={"other"}, refusal=refusal)
    src = write_jsonl(tmp_path / "in.jsonl", texts(50))
    out = tmp_path / "out.jsonl"
    result = invoke(server, str(src), "-o", str(out))
    assert result.exit_code == 1
    assert "does not support embeddings" in result.stderr.lower()
    assert "nothing was written" in result.stderr
    assert not out.exists()
    assert len(embed_requests(server)) <= 4  # the first groups in flight, no halving


def test_no_server_exits_1(tmp_path: Path) -> None:
    """A refused connection stops the run: exit 1, nothing written."""
    src = write_jsonl(tmp_path / "in.jsonl", texts(3))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, ["embed", str(src), "-o", str(out), "-e", "http://127.0.0.1:9/v1", "-m", "e"]
    )
    assert result.exit_code == 1
    assert not out.exists()


def test_run_embed_python_api_over_two_servers(tmp_path: Path) -> None:
    """``lmlink.batch.run_embed`` shares the work between endpoints, sorts out-of-order
    answers and returns the summary."""
    with FakeServer(model="embedder") as a, FakeServer(model="embedder") as b:
        a.embed = EmbedSettings(order="reversed")
        out = tmp_path / "out.jsonl"
        summary = lmlink.batch.run_embed(
            texts(40), out, endpoint=[a.url, b.url], model="embedder", batch_size=5
        )
        assert (summary.ok, summary.failed) == (40, 0)
        assert summary.prompt_tokens == 80
        assert vectors(out) == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(40)}
        assert embed_requests(a)
        assert embed_requests(b)


def test_run_embed_rejects_bad_arguments(tmp_path: Path) -> None:
    """batch_size and dimensions are checked before anything is read or written."""
    out = tmp_path / "out.jsonl"
    with pytest.raises(lmlink.ConfigurationError, match="batch_size"):
        lmlink.batch.run_embed(texts(2), out, endpoint="http://127.0.0.1:9/v1", batch_size=0)
    with pytest.raises(lmlink.ConfigurationError, match="dimensions"):
        lmlink.batch.run_embed(texts(2), out, endpoint="http://127.0.0.1:9/v1", dimensions=-1)
    assert not out.exists()


def _embed_process(server: FakeServer, src: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    args = ["embed", str(src), "-o", str(out), "-e", server.url, "-m", "embedder", *extra]
    return subprocess.Popen(
        [*lmlink_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def _wait_for_lines(out: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < n):
        time.sleep(0.02)


def test_sigkill_mid_run_then_resume(server: FakeServer, tmp_path: Path) -> None:
    """Killed with SIGKILL mid-run, then run again: every id has exactly one line with
    its own vector, and the ids done before the kill were not sent again."""
    server.embed = EmbedSettings()
    server.enqueue_embeddings(*[Reply(delay=0.05) for _ in range(1000)])
    src = write_jsonl(tmp_path / "in.jsonl", texts(300))
    out = tmp_path / "out.jsonl"
    proc = _embed_process(server, src, out, "--batch-size", "3", "-c", "2")
    try:
        _wait_for_lines(out, 20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    done_before = len(read_jsonl(out))
    assert 0 < done_before < 300
    server.reset()
    finish = _embed_process(server, src, out, "--batch-size", "50")
    _, err = finish.communicate(timeout=60)
    assert finish.returncode == 0, err
    assert vectors(out) == {f"d{i:03d}": embedding_of(f"document {i}") for i in range(300)}
    sent = sum(len(r.json["input"]) for r in embed_requests(server))
    assert sent == 300 - done_before


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"]
)
def test_a_signal_stops_cleanly_and_resumes(
    server: FakeServer, tmp_path: Path, signum: int, code: int
) -> None:
    """SIGTERM (143) or Ctrl-C (130) stops cleanly with whole lines; a re-run finishes."""
    server.enqueue_embeddings(*[Reply(delay=0.05) for _ in range(1000)])
    src = write_jsonl(tmp_path / "in.jsonl", texts(200))
    out = tmp_path / "out.jsonl"
    proc = _embed_process(server, src, out, "--batch-size", "2", "-c", "2")
    try:
        _wait_for_lines(out, 5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "run the same command again" in err
    for line in out.read_text(encoding="utf-8").splitlines():
        json.loads(line)  # whole lines only
    server.reset()
    finish = _embed_process(server, src, out)
    _, err = finish.communicate(timeout=60)
    assert finish.returncode == 0, err
    assert len(vectors(out)) == 200


ROOT = Path(__file__).resolve().parent.parent


def _readme_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Embeddings\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_command_and_numpy_loading_work(server: FakeServer, tmp_path: Path) -> None:
    """The README's ``lmlink embed`` command, word for word, then its numpy lines: one unit
    row per id, in file order."""
    np = pytest.importorskip("numpy")
    section = _readme_section()
    [command] = [
        line
        for line in section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
        if line.startswith("lmlink ")
    ]
    write_jsonl(tmp_path / "docs.jsonl", texts(5))
    args = [*shlex.split(command)[1:], "-e", server.url]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.stderr
        loading = section.split("```python\n")[2].split("```", 1)[0]
        scope: dict[str, Any] = {}
        exec(loading, scope)  # the README's own lines
    finally:
        os.chdir(cwd)
    matrix = scope["matrix"]
    assert scope["ids"] == [f"d{i:03d}" for i in range(5)]
    assert matrix.shape == (5, 8)
    assert all(math.isclose(float(n), 1.0, rel_tol=1e-5) for n in np.linalg.norm(matrix, axis=1))
    assert embed_requests(server)[0].json["model"] == "nomic-embed-text"

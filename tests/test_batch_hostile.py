"""The batch runner tried as a hostile user would: equivalent settings spelled another way,
through the real ``lmlink`` command line or ``run_batch``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmlink
from batch_helpers import prompts, read_jsonl, run_cli, write_jsonl, write_output
from lmlink.batch import run_batch
from lmlink.testing import FakeServer, sensible_reply


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


@pytest.fixture
def smart() -> Iterator[FakeServer]:
    """A server that answers extract requests with JSON of the asked shape."""
    with FakeServer(model="fake-model", responder=sensible_reply) as srv:
        yield srv


def test_extract_resumes_with_the_same_schema_written_in_another_key_order(
    smart: FakeServer, tmp_path: Path
) -> None:
    """A schema file re-formatted with its keys in another order (``jq -S``, an editor) is
    the same schema: the resume goes on; a schema that really differs is still refused."""
    rows = [{"id": f"r{i}", "text": f"invoice {i} from ACME"} for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    more = write_jsonl(tmp_path / "more.jsonl", [*rows, {"id": "r3", "text": "invoice 3"}])
    out = tmp_path / "out.jsonl"
    schema = {
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "number": {"type": "integer"}},
        "required": ["vendor"],
    }
    first_file = tmp_path / "a.schema.json"
    first_file.write_text(json.dumps(schema))
    sorted_file = tmp_path / "b.schema.json"
    sorted_file.write_text(json.dumps(schema, sort_keys=True, indent=4))
    base = ["extract", "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    first = run_cli([*base, str(src), "--schema", str(first_file)])
    assert first.returncode == 0, first.stderr
    again = run_cli([*base, str(more), "--schema", str(sorted_file)])
    assert again.returncode == 0, again.stderr
    assert "(3 already done, 1 to run)" in again.stderr
    assert [line["id"] for line in read_jsonl(out)] == ["r0", "r1", "r2", "r3"]
    other = tmp_path / "c.schema.json"
    other.write_text(json.dumps({**schema, "required": ["vendor", "number"]}))
    before = out.read_bytes()
    refused = run_cli([*base, str(more), "--schema", str(other)])
    assert refused.returncode == 2, refused.stderr
    assert "the schema" in refused.stderr
    assert out.read_bytes() == before


def _fifo_of(path: Path, rows: list[dict[str, str]]) -> tuple[Path, threading.Thread]:
    """A named pipe that gives ``rows`` once, as ``<(cmd)`` or ``mkfifo`` would."""
    os.mkfifo(path)

    def feed() -> None:
        with path.open("w", encoding="utf-8") as pipe:
            pipe.writelines(json.dumps(row) + "\n" for row in rows)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return path, writer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_input_is_read_once_and_every_row_runs(tmp_path: Path) -> None:
    """``lmlink batch <(cmd)``: a pipe cannot be read twice, like stdin; its rows are
    checked and then all sent (not "20 not done" from a second read of a drained pipe)."""
    rows = [{"id": f"p{i}", "prompt": f"hello {i}"} for i in range(20)]
    src, writer = _fifo_of(tmp_path / "rows.pipe", rows)
    out = tmp_path / "out.jsonl"
    with FakeServer(model="fake-model") as srv:
        result = run_cli(["batch", str(src), "-o", str(out), "-e", srv.url, "-m", "fake-model"])
    writer.join(5)
    assert result.returncode == 0, result.stderr
    assert sorted(line["id"] for line in read_jsonl(out)) == sorted(r["id"] for r in rows)
    assert "20 ok" in result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_run_batch_reads_a_named_pipe_once(tmp_path: Path) -> None:
    """The same through ``run_batch``: the summary and the file hold every row."""
    rows = [{"id": f"q{i}", "prompt": "hi"} for i in range(7)]
    src, writer = _fifo_of(tmp_path / "rows.pipe", rows)
    out = tmp_path / "out.jsonl"
    with FakeServer(model="fake-model") as srv:
        summary = run_batch(src, out, endpoint=srv.url, model="fake-model")
    writer.join(5)
    assert (summary.ok, summary.failed, summary.remaining) == (7, 0, 0)
    assert len(read_jsonl(out)) == 7


@pytest.mark.parametrize(
    "extra", [[], ["--retry-errors"], ["--allow-changed-settings"]], ids=["run", "retry", "allow"]
)
def test_an_output_of_a_newer_format_is_refused_untouched(tmp_path: Path, extra: list[str]) -> None:
    """A header whose format is newer than this lmlink's (written by a later version, whose
    lines may mean something else) is refused, exit 2, before anything is sent or changed:
    neither resumed, nor rewritten by --retry-errors, nor adopted."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = write_output(
        tmp_path / "out.jsonl",
        [{"id": "p000", "error": {"type": "OverloadedError", "message": "busy"}}],
    )
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    header["format"] = 2
    out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    before = out.read_bytes()
    with FakeServer(model="fake-model") as srv:
        result = run_cli(
            ["batch", str(src), "-o", str(out), "-e", srv.url, "-m", "fake-model", *extra]
        )
        sent = srv.stats.chat_requests
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "newer lmlink" in line
    assert "format 2" in line
    assert out.read_bytes() == before
    assert sent == 0


@pytest.mark.parametrize(
    ("first", "then"),
    [(["--shard", "1/1"], []), ([], ["--shard", "1/1"])],
    ids=["shard-then-none", "none-then-shard"],
)
def test_shard_1_of_1_is_the_same_run_as_no_shard(
    tmp_path: Path, first: list[str], then: list[str]
) -> None:
    """One shard of one is every id: resuming with or without ``--shard 1/1`` is the same
    run, not "other settings"; another shard is still refused."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    out = tmp_path / "out.jsonl"
    with FakeServer(model="fake-model") as srv:
        base = ["batch", str(src), "-o", str(out), "-e", srv.url, "-m", "fake-model"]
        done = run_cli([*base, *first])
        assert done.returncode == 0, done.stderr
        again = run_cli([*base, *then])
        assert again.returncode == 0, again.stderr
        assert "4 already done" in again.stderr
        other = run_cli([*base, "--shard", "1/2"])
    assert other.returncode == 2, other.stderr
    assert "shard" in other.stderr
    assert len(read_jsonl(out)) == 4


@pytest.mark.parametrize("header", ["id,text,text", "id,text,id", "id, text,text "])
def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path, header: str) -> None:
    """``id,text,text``: which cell is the text (or the id)? Refused with the line and the
    column, exit 2, nothing sent, no output; not one of the two taken silently."""
    src = tmp_path / "rows.csv"
    src.write_text(f"{header}\na1,the real text,an old note\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with FakeServer(model="fake-model") as srv:
        result = run_cli(["summarize", str(src), "-o", str(out), "-e", srv.url, "-m", "fake-model"])
        sent = srv.stats.chat_requests
    assert result.returncode == 2, result.stderr
    assert "line 1" in result.stderr
    assert "twice" in result.stderr
    assert sent == 0
    assert not out.exists()


@pytest.mark.parametrize("model", [[], ["-m", "fake-model"]], ids=["server-model", "named"])
def test_a_run_that_cannot_start_leaves_no_cache_file(tmp_path: Path, model: list[str]) -> None:
    """No server: one line, exit 1, and no file at all, the new ``--cache`` included
    (an empty SQLite file was left behind)."""
    with FakeServer() as gone:
        url = gone.url
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out, cache = tmp_path / "out.jsonl", tmp_path / "answers.sqlite"
    result = run_cli(["batch", str(src), "-o", str(out), "--cache", str(cache), "-e", url, *model])
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("template", ["Say {text.upper}", "Say {text.__class__}", "{meta[a].real}"])
def test_a_template_attribute_is_refused_before_anything_is_sent(
    tmp_path: Path, template: str
) -> None:
    """``{text.upper}`` rendered Python's ``<built-in method upper of str object at 0x...>``
    into every prompt: refused as a --template problem (exit 2, nothing sent or written);
    an index into a nested field, ``{meta[a]}``, still works."""
    rows = [{"id": "a", "text": "hello", "meta": {"a": 1}}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    with FakeServer(model="fake-model") as srv:
        base = ["batch", str(src), "-o", str(out), "-e", srv.url, "-m", "fake-model"]
        refused = run_cli([*base, "--template", template])
        assert srv.stats.chat_requests == 0
        assert not out.exists()
        fine = run_cli([*base, "--template", "Say {text} {meta[a]}"])
        [sent] = srv.requests
    assert refused.returncode == 2, refused.stderr
    assert "--template" in refused.stderr
    assert "attribute" in refused.stderr
    assert fine.returncode == 0, fine.stderr
    assert sent.json["messages"][-1]["content"] == "Say hello 1"


def test_an_empty_output_given_by_the_user_stays_empty_if_the_run_cannot_start(
    tmp_path: Path,
) -> None:
    """``touch out.jsonl`` then a run with no server: "no line was added", and indeed the
    file is as it was (empty, its mode kept), not left holding a header."""
    with FakeServer() as gone:
        url = gone.url
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    out.touch(mode=0o600)
    out.chmod(0o600)
    result = run_cli(["batch", str(src), "-o", str(out), "-e", url, "-m", "fake-model"])
    assert result.returncode == 1, result.stderr
    assert "no line was added" in result.stderr
    assert out.read_bytes() == b""
    assert out.stat().st_mode & 0o777 == 0o600

"""A batch output is only ever lmlink's, and one run's settings: the header record, the
settings check, the files around a run (input, cache, symlinks, hard links, modes) and
a power cut's NUL tail, all through the real ``lmlink`` command line or ``run_batch``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmlink
from batch_helpers import (
    prompts,
    read_header,
    read_jsonl,
    run_cli,
    settings,
    write_jsonl,
    write_output,
)
from lmlink.batch import SettingsChangedError, Task, run_batch
from lmlink.testing import FakeServer, sensible_reply


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


@pytest.fixture
def smart() -> Iterator[FakeServer]:
    """A server that answers classify and extract requests with JSON of the asked shape."""
    with FakeServer(model="fake-model", responder=sensible_reply) as srv:
        yield srv


def _tickets(tmp_path: Path) -> Path:
    rows = [
        {"id": "t1", "text": "I was charged twice for my subscription"},
        {"id": "t2", "text": "The app crashes when I open settings"},
        {"id": "t3", "text": "Please add a dark mode"},
    ]
    return write_jsonl(tmp_path / "tickets.jsonl", rows)


def _classify(server: FakeServer, src: Path, out: Path, labels: str, *extra: str) -> list[str]:
    return ["classify", str(src), "-o", str(out), "--labels", labels, "-e", server.url, *extra]


# -- 1. only lmlink's own files are outputs --------------------------------------------------


def test_the_output_starts_with_a_header_holding_the_settings_but_not_the_endpoint(
    smart: FakeServer, tmp_path: Path
) -> None:
    """The first line is lmlink's header: task, labels, schema, template, system, model and
    sampling parameters; no endpoint. The result lines keep their shape."""
    src, out = _tickets(tmp_path), tmp_path / "labels.jsonl"
    args = _classify(smart, src, out, "billing,bug,other", "-m", "fake-model")
    result = run_cli([*args, "--temperature", "0.2", "--system", "Be terse."])
    assert result.returncode == 0, result.stderr
    header = read_header(out)
    assert header["lmlink"] == "batch-output"
    assert header["format"] == 1
    assert "id" not in header
    got = header["settings"]
    assert got["task"] == "classify"
    assert got["labels"] == ["billing", "bug", "other"]
    assert got["schema"]["properties"]["label"]["enum"] == ["billing", "bug", "other"]
    assert (got["template"], got["system"], got["model"]) == (None, "Be terse.", "fake-model")
    assert got["params"] == {"temperature": 0.2}
    assert str(smart.port) not in out.read_text().splitlines()[0]
    lines = read_jsonl(out)
    assert {line["id"]: line["label"] for line in lines} == {
        "t1": "billing",
        "t2": "bug",
        "t3": "other",
    }
    assert set(lines[0]) == {
        "id",
        "content",
        "reasoning",
        "parsed",
        "finish_reason",
        "prompt_tokens",
        "output_tokens",
        "latency_s",
        "ttft_s",
        "model",
        "label",
    }


def test_another_input_file_as_the_output_is_refused_untouched(
    smart: FakeServer, tmp_path: Path
) -> None:
    """``-o week2.jsonl`` where week2 is another input: exit 2, one line, nothing sent, the
    file byte for byte as it was (its ids never count as done)."""
    src = write_jsonl(tmp_path / "week1.jsonl", prompts(3))
    week2 = write_jsonl(tmp_path / "week2.jsonl", prompts(3))
    before = week2.read_bytes()
    result = run_cli(["batch", str(src), "-o", str(week2), "-e", smart.url, "-m", "m"])
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "is not an lmlink batch output" in line
    assert week2.read_bytes() == before
    assert smart.stats.requests == 0


def test_the_input_under_another_name_is_refused(smart: FakeServer, tmp_path: Path) -> None:
    """``-o`` as a hard link or a symlink to INPUT: exit 2 before anything is written."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    before = src.read_bytes()
    os.link(src, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(src)
    for name in ("hard.jsonl", "soft.jsonl"):
        out = tmp_path / name
        result = run_cli(["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "m"])
        assert result.returncode == 2, result.stderr
        assert f"the output {out} is the input file" in result.stderr
    assert src.read_bytes() == before
    assert smart.stats.requests == 0


def test_an_output_of_an_older_lmlink_is_refused_then_adopted_on_request(
    smart: FakeServer, tmp_path: Path
) -> None:
    """Result lines without a header (an older lmlink's output): refused with a line saying
    how to go on; with --allow-changed-settings a header goes in front and nothing is lost."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "old.jsonl"
    old = [
        {"id": "p000", "content": "old answer", "finish_reason": "stop"},
        {"id": "p001", "error": {"type": "APITimeoutError", "message": "x", "status_code": None}},
    ]
    write_jsonl(out, old)
    before = out.read_bytes()
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    refused = run_cli(args)
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert "no header line (an output of an older lmlink)" in line
    assert "--allow-changed-settings" in line
    assert out.read_bytes() == before
    adopted = run_cli([*args, "--allow-changed-settings"])
    assert adopted.returncode == 3, adopted.stderr  # p001 still has only its error line
    assert read_header(out)["settings"] == settings()
    assert read_jsonl(out)[:2] == old
    assert [r["id"] for r in read_jsonl(out)] == ["p000", "p001", "p002"]
    again = run_cli(args)  # adopted: the same command now resumes
    assert again.returncode == 3, again.stderr


# -- 2. one run, one set of settings ---------------------------------------------------------


def test_a_resume_with_other_settings_is_refused_naming_what_changed(
    smart: FakeServer, tmp_path: Path
) -> None:
    """Other labels and a template: exit 2, one line naming both, nothing sent or written;
    the same command as before resumes; --allow-changed-settings adds to the file anyway."""
    src, out = _tickets(tmp_path), tmp_path / "out.jsonl"
    first = run_cli(_classify(smart, src, out, "billing,bug", "-m", "fake-model"))
    assert first.returncode == 0, first.stderr
    before, sent = out.read_bytes(), smart.stats.chat_requests
    changed = _classify(smart, src, out, "spam,ham,other", "-m", "fake-model")
    changed += ["--template", "Translate: {text}"]
    refused = run_cli(changed)
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert "holds answers made with other settings" in line
    assert "labels 'billing,bug' -> 'spam,ham,other'" in line
    assert "template none -> 'Translate: {text}'" in line
    assert "schema" not in line  # implied by the labels
    assert out.read_bytes() == before
    assert smart.stats.chat_requests == sent
    same = run_cli(_classify(smart, src, out, "billing,bug", "-m", "fake-model"))
    assert same.returncode == 0, same.stderr
    assert "3 already done" in same.stderr
    more = write_jsonl(tmp_path / "more.jsonl", [*map(json.loads, src.read_text().splitlines())])
    with more.open("a") as rows:
        rows.write(json.dumps({"id": "t4", "text": "spam spam spam"}) + "\n")
    changed[1] = str(more)
    allowed = run_cli([*changed, "--allow-changed-settings"])
    assert allowed.returncode == 0, allowed.stderr
    assert "(3 already done, 1 to run)" in allowed.stderr
    assert read_jsonl(out)[-1]["label"] == "spam"
    assert read_header(out)["settings"]["labels"] == ["billing", "bug"]  # the file's first


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--temperature", "0.7"], "temperature none -> '0.7'"),
        (["--max-tokens", "9"], "max_tokens none -> '9'"),
        (["--system", "Be brief."], "system none -> 'Be brief.'"),
        (["-m", "other-model"], "model 'fake-model' -> 'other-model'"),
        (["--json"], "schema"),
    ],
    ids=["temperature", "max-tokens", "system", "model", "json"],
)
def test_each_setting_is_checked(
    smart: FakeServer, tmp_path: Path, extra: list[str], named: str
) -> None:
    """Every setting that shapes an answer is part of the check."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "-e", smart.url]
    assert run_cli([*args, "-m", "fake-model"]).returncode == 0
    extra = extra if "-m" in extra else [*extra, "-m", "fake-model"]
    result = run_cli([*args, *extra])
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert len(read_jsonl(out)) == 2


def test_the_server_default_model_is_checked_once_known(tmp_path: Path) -> None:
    """Without -m the model is the server's first: a server now listing another model first
    is a changed setting, found before any item is sent."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    with FakeServer(models=["model-a", "model-b"]) as srv:
        assert run_cli(["batch", str(src), "-o", str(out), "-e", srv.url]).returncode == 0
        srv.models = ["model-b", "model-a"]
        srv.reset()
        write_jsonl(src, prompts(3))  # one more item, so the run asks the server
        result = run_cli(["batch", str(src), "-o", str(out), "-e", srv.url])
        assert srv.stats.chat_requests == 0
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"lmlink: {out} holds answers made with other settings (model 'model-a' -> "
        "'model-b'); give another output, or --allow-changed-settings "
        "(allow_changed_settings=True) to add to it anyway"
    ]


def test_run_batch_raises_settings_changed_and_allows_on_request(
    smart: FakeServer, tmp_path: Path
) -> None:
    """The same check through the API: SettingsChangedError (a JournalError) with the
    changes, or the run with ``allow_changed_settings=True``."""
    out = tmp_path / "out.jsonl"
    task = Task.classify(["billing", "bug"])
    rows = [{"id": "a", "text": "charged twice"}, {"id": "b", "text": "crash"}]
    run_batch(rows[:1], out, endpoint=smart.url, model="fake-model", task=task)
    other = Task.classify(["spam", "ham"])
    with pytest.raises(SettingsChangedError) as info:
        run_batch(rows, out, endpoint=smart.url, model="fake-model", task=other)
    assert info.value.changes == ["labels 'billing,bug' -> 'spam,ham'"]
    assert isinstance(info.value, lmlink.batch.JournalError)
    summary = run_batch(
        rows, out, endpoint=smart.url, model="fake-model", task=other, allow_changed_settings=True
    )
    assert (summary.ok, summary.skipped) == (1, 1)


# -- 3. the cache is never the output or the input ---------------------------------------------


@pytest.mark.parametrize("which", ["output", "input", "hard-link-of-output"])
def test_a_cache_on_the_output_or_input_is_refused(
    smart: FakeServer, tmp_path: Path, which: str
) -> None:
    """``--cache out.jsonl -o out.jsonl`` (or the input, or a hard link of the output):
    exit 2 before anything is sent, the files as they were."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = write_output(tmp_path / "out.jsonl", [])
    cache = {"output": out, "input": src, "hard-link-of-output": tmp_path / "c.sqlite"}[which]
    if which == "hard-link-of-output":
        os.link(out, cache)
    before = (src.read_bytes(), out.read_bytes())
    args = ["batch", str(src), "-o", str(out), "--cache", str(cache)]
    result = run_cli([*args, "-e", smart.url, "-m", "fake-model"])
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert f"the cache {cache} is the {'input' if which == 'input' else 'output'} file" in line
    assert (src.read_bytes(), out.read_bytes()) == before
    assert smart.stats.requests == 0


# -- 5. --retry-errors keeps the file what it was ---------------------------------------------


def _with_an_error(path: Path) -> Path:
    error = {"type": "APITimeoutError", "message": "x", "status_code": None}
    return write_output(path, [{"id": "p000", "error": error}, {"id": "p001", "content": "ok"}])


def test_retry_errors_keeps_mode_and_owner(smart: FakeServer, tmp_path: Path) -> None:
    """A 0600 output stays 0600 (and keeps its owner) after the rewrite."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = _with_an_error(tmp_path / "out.jsonl")
    out.chmod(0o600)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(out, *owner)
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    result = run_cli([*args, "--retry-errors"])
    assert result.returncode == 0, result.stderr
    st = out.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, *owner)
    assert sorted(r["id"] for r in read_jsonl(out)) == ["p000", "p001"]
    assert all("error" not in r for r in read_jsonl(out))


def test_retry_errors_writes_through_a_symlink(smart: FakeServer, tmp_path: Path) -> None:
    """``-o`` given as a symlink: the target is rewritten, the link stays a link to it."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    (tmp_path / "data").mkdir()
    target = _with_an_error(tmp_path / "data" / "real.jsonl")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    args = ["batch", str(src), "-o", str(link), "-e", smart.url, "-m", "fake-model"]
    result = run_cli([*args, "--retry-errors"])
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert link.resolve() == target.resolve()
    assert all("error" not in r for r in read_jsonl(target))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["real.jsonl"]


def test_retry_errors_never_splits_a_hard_link(smart: FakeServer, tmp_path: Path) -> None:
    """An output with another hard link is not replaced (a rename would split the two):
    exit 2 with a line saying what to do; both names still hold the same file."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = _with_an_error(tmp_path / "out.jsonl")
    os.link(out, tmp_path / "copy.jsonl")
    before = out.read_bytes()
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    result = run_cli([*args, "--retry-errors"])
    assert result.returncode == 2
    assert "has 2 hard links" in result.stderr
    assert out.read_bytes() == before
    assert os.path.samefile(out, tmp_path / "copy.jsonl")
    assert smart.stats.requests == 0


# -- 8. a power cut's NUL tail -----------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b"\0" * 64, b'{"id": "p001", "cont' + b"\0" * 300, b"\0" * 4096],
    ids=["nul-line", "torn-then-nul", "nul-block"],
)
def test_a_nul_filled_tail_is_repaired_like_a_torn_line(
    smart: FakeServer, tmp_path: Path, tail: bytes
) -> None:
    """The last write left as NUL bytes (ext4/XFS after a power cut): cut off with a
    warning, that item run again, exit 0."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = write_output(tmp_path / "out.jsonl", [{"id": "p000", "content": "ok"}])
    with out.open("ab") as f:
        f.write(tail)
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert f"ended in a torn line ({len(tail)} bytes" in result.stderr
    assert b"\0" not in out.read_bytes()
    assert [r["id"] for r in read_jsonl(out)] == ["p000", "p001"]


def test_an_output_that_is_all_nul_bytes_starts_afresh(smart: FakeServer, tmp_path: Path) -> None:
    """Even the header's write can be zeroed: such a file starts again from the header."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"\0" * 512)
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert read_header(out)["settings"] == settings()
    assert len(read_jsonl(out)) == 2


def test_a_torn_header_is_repaired_but_a_foreign_fragment_is_not(
    smart: FakeServer, tmp_path: Path
) -> None:
    """A file holding only the start of lmlink's header (killed while writing it) is
    repaired; one holding the start of anything else is left alone."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    args = ["-e", smart.url, "-m", "fake-model"]
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"lmlink":"batch-out')
    assert run_cli(["batch", str(src), "-o", str(torn), *args]).returncode == 0
    assert len(read_jsonl(torn)) == 1
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"id": "x", "prompt": "half a ro')
    result = run_cli(["batch", str(src), "-o", str(other), *args])
    assert result.returncode == 2
    assert other.read_bytes() == b'{"id": "x", "prompt": "half a ro'


def test_an_output_with_no_answer_yet_takes_the_new_settings(
    smart: FakeServer, tmp_path: Path
) -> None:
    """A header and no result (a run killed before its first answer): nothing could be
    mixed, so a run with other settings goes ahead and the header says what it used."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = write_output(tmp_path / "out.jsonl", [], params={"temperature": 0.1})
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    result = run_cli([*args, "--temperature", "0.9"])
    assert result.returncode == 0, result.stderr
    assert read_header(out)["settings"] == settings(params={"temperature": 0.9})
    assert len(read_jsonl(out)) == 2


@pytest.mark.parametrize("model", ["-m", "server-default"])
def test_a_refused_retry_leaves_its_error_lines(
    smart: FakeServer, tmp_path: Path, model: str
) -> None:
    """``--retry-errors`` with other settings is refused before a line is removed, whether
    the change is seen at once (-m) or once the server names its model."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = _with_an_error(tmp_path / "out.jsonl")
    before = out.read_bytes()
    args = ["batch", str(src), "-o", str(out), "-e", smart.url, "--retry-errors"]
    if model == "-m":
        args += ["-m", "other-model"]
    else:
        smart.models = ["other-model"]
    result = run_cli(args)
    assert result.returncode == 2, result.stderr
    assert "model 'fake-model' -> 'other-model'" in result.stderr
    assert out.read_bytes() == before
    assert smart.stats.chat_requests == 0


def test_a_summary_length_change_is_named(smart: FakeServer, tmp_path: Path) -> None:
    """``summarize --max-words`` lives in the task's instructions, and is checked too."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "a long story"}])
    out = tmp_path / "out.jsonl"
    args = ["summarize", str(src), "-o", str(out), "-e", smart.url, "-m", "fake-model"]
    assert run_cli([*args, "--max-words", "40"]).returncode == 0
    result = run_cli([*args, "--max-words", "10"])
    assert result.returncode == 2
    assert "(the task's instructions)" in result.stderr

"""The crash-safe output file: whole lines only, torn tail repair, locking, atomic rewrite."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from lmlink.batch import JournalError
from lmlink.batch._header import header_line
from lmlink.batch._journal import Journal

HEAD = header_line({"task": "batch"}).decode()  # the first line of every output


def test_append_writes_one_json_line_per_record(tmp_path: Path) -> None:
    """Each record is one line, on disk as soon as append returns."""
    out = tmp_path / "out.jsonl"
    with Journal.open(out) as journal:
        assert journal.state.created
        journal.append({"id": "a", "content": "x\ny"})
        journal.append({"id": "b", "error": {"type": "RateLimitError"}})
        assert out.read_text().count("\n") == 2
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]
    assert not journal.state.header  # a header is put in by the runner (write_header)


def test_reopening_reads_the_done_ids_and_which_are_errors(tmp_path: Path) -> None:
    """The state maps every id in the file to whether its line is an error."""
    out = tmp_path / "out.jsonl"
    out.write_text(HEAD + '{"id": "a", "content": ""}\n{"id": "b", "error": {}}\n')
    with Journal.open(out) as journal:
        assert journal.state.done == {"a": False, "b": True}
        assert not journal.state.created
        assert journal.state.header == json.loads(HEAD)


@pytest.mark.parametrize(
    "tail",
    [
        b'{"id": "c", "cont',
        b"{",
        b'{"',
        b'{"id":"c","content":"x"}  trailing',
        b'{"content": "an answer from an older cache-hit li',
    ],
    ids=["mid", "brace", "quote", "garbled", "id-last"],
)
def test_a_torn_last_line_is_cut_off_and_reported(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A last line without its newline (a killed write) is removed, with a warning."""
    out = tmp_path / "out.jsonl"
    good = HEAD.encode() + b'{"id": "a", "content": ""}\n{"id": "b", "content": ""}\n'
    out.write_bytes(good + tail)
    with caplog.at_level(logging.WARNING, logger="lmlink"), Journal.open(out) as journal:
        assert journal.state.repaired_bytes == len(tail)
        assert journal.state.done == {"a": False, "b": False}
        journal.append({"id": "c", "content": "again"})
    assert out.read_bytes() == good + b'{"id":"c","content":"again"}\n'
    assert "torn line" in caplog.text


def test_a_file_that_is_not_batch_output_is_refused(tmp_path: Path) -> None:
    """A complete line that is not a result line means the wrong file: nothing is touched."""
    out = tmp_path / "notes.jsonl"
    out.write_text(HEAD + '{"id": "a"}\nhello world\n')
    with pytest.raises(JournalError, match="line 3 is not an lmlink result line"):
        Journal.open(out)
    assert out.read_text() == HEAD + '{"id": "a"}\nhello world\n'


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path: Path) -> None:
    """Two runs never append to one file at once; the lock dies with its holder."""
    out = tmp_path / "out.jsonl"
    first = Journal.open(out)
    with pytest.raises(JournalError) as info:
        Journal.open(out)
    assert info.value.busy
    assert pickle.loads(pickle.dumps(info.value)).busy
    first.close()
    Journal.open(out).close()


def test_retry_rewrite_drops_only_the_error_lines_of_the_given_ids(tmp_path: Path) -> None:
    """The rewrite keeps every other line, leaves no temp file, and the ids count as not done."""
    out = tmp_path / "out.jsonl"
    out.write_text(
        HEAD + '{"id": "a", "content": ""}\n{"id": "b", "error": {}}\n'
        '{"id": "c", "error": {}}\n{"id": "d", "content": ""}\n'
    )
    inode = os.stat(out).st_ino
    with Journal.open(out, retry_errors_for=["a", "b", "x"]) as journal:
        assert journal.state.done == {"a": False, "c": True, "d": False}
        assert journal.state.dropped == 1
        journal.append({"id": "b", "content": "fixed"})
    head, *lines = out.read_text().splitlines()
    assert head + "\n" == HEAD
    assert [json.loads(line)["id"] for line in lines] == ["a", "c", "d", "b"]
    assert os.stat(out).st_ino != inode  # replaced by rename, not edited in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_the_rewritten_file_is_locked_too(tmp_path: Path) -> None:
    """After a retry rewrite the new file is the one that is locked."""
    out = tmp_path / "out.jsonl"
    out.write_text(HEAD + '{"id": "b", "error": {}}\n')
    with Journal.open(out, retry_errors_for=["b"]), pytest.raises(JournalError, match="another"):
        Journal.open(out)


def test_a_directory_is_not_an_output(tmp_path: Path) -> None:
    """Giving a directory as the output is a clear error."""
    with pytest.raises(JournalError, match="is a directory"):
        Journal.open(tmp_path)


def test_a_whole_last_record_without_its_newline_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed between a record and its newline: the record is whole, so it is kept (the id
    is done) and the newline is written; nothing is reported as torn."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(HEAD.encode() + b'{"id": "a", "content": ""}\n{"id": "b", "error": {}}')
    with caplog.at_level(logging.WARNING, logger="lmlink"), Journal.open(out) as journal:
        assert journal.state.done == {"a": False, "b": True}
        assert journal.state.repaired_bytes == 0
        journal.append({"id": "c", "content": "x"})
    assert out.read_bytes().endswith(b'{"id": "b", "error": {}}\n{"id":"c","content":"x"}\n')
    assert "torn" not in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        b'{"theme": "dark", "size": 12}',  # json.dump: no newline at all
        b'{\n  "name": "pkg",\n  "version": "1.0"\n}',  # pretty-printed
        b'{"id": 5}',  # JSON, but not a result line
        b"just some notes\nand more",
        b'{"id": "a", "content": ""}\nplain text tail',
        HEAD.encode() + b'{"id": "a", "content": ""}\nplain text tail',
        b'{"id": "a", "prompt": "an input row"}\n{"id": "b", "prompt": "another"}\n',
        b'{"id": "a", "prompt": "an input row, no newline"}',
        b'{"id": "a", "cont',
    ],
    ids=[
        "json-dump",
        "pretty",
        "numeric-id",
        "text",
        "text-tail",
        "text-tail-after-header",
        "input-file",
        "one-line-input",
        "torn-without-header",
    ],
)
def test_a_file_that_is_not_batch_output_is_never_changed(tmp_path: Path, content: bytes) -> None:
    """Pointing the output at some other file is refused before a byte of it changes: no
    "torn line" is cut from a file that is not lmlink output."""
    out = tmp_path / "settings.json"
    out.write_bytes(content)
    with pytest.raises(JournalError, match=r"not an lmlink (result line|batch output)"):
        Journal.open(out)
    assert out.read_bytes() == content


def test_an_id_with_an_answer_is_done_even_if_it_also_has_an_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Files joined by hand can hold an id twice: any answer makes it done, a warning says
    so, and a retry of errors leaves it alone (no third line)."""
    out = tmp_path / "out.jsonl"
    out.write_text(
        HEAD + '{"id": "a", "content": "old"}\n{"id": "a", "error": {}}\n'
        '{"id": "b", "error": {}}\n{"id": "b", "error": {}}\n'
    )
    with caplog.at_level(logging.WARNING, logger="lmlink"):
        journal = Journal.open(out, retry_errors_for={"a", "b"})
    with journal:
        assert journal.state.done == {"a": False}
        assert journal.state.dropped == 1
    assert "2 lines for ids it already holds" in caplog.text
    assert out.read_text() == HEAD + '{"id": "a", "content": "old"}\n{"id": "a", "error": {}}\n'


def test_the_rewrite_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """The temporary file of a retry rewrite has an unguessable name and is created with
    O_EXCL: symlinks planted at the names a process id would give are not followed."""
    folder = tmp_path / "out"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = folder / "out.jsonl"
    out.write_text(HEAD + '{"id": "a", "error": {}}\n{"id": "b", "content": "kept"}\n')
    for pid in range(os.getpid() - 50, os.getpid() + 50):
        (folder / f".out.jsonl.{pid}.tmp").symlink_to(victim)
    with Journal.open(out, retry_errors_for={"a"}) as journal:
        assert journal.state.dropped == 1
    assert victim.read_text() == "precious"
    assert not out.is_symlink()
    assert out.read_text() == HEAD + '{"id": "b", "content": "kept"}\n'
    assert sorted(p.name for p in folder.iterdir() if not p.is_symlink()) == ["out.jsonl"]


def test_a_pipe_or_device_is_not_an_output(tmp_path: Path) -> None:
    """A FIFO (or /dev/stdout) as the output is refused with a JournalError, not an OSError."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(JournalError, match="not a regular file"):
        Journal.open(fifo)


def test_a_header_goes_first_once_and_a_file_without_answers_is_discarded(tmp_path: Path) -> None:
    """write_header puts the header in an empty file (once); discard removes a file this
    run created and wrote no result to, and keeps one with results."""
    out = tmp_path / "out.jsonl"
    with Journal.open(out) as journal:
        journal.write_header({"task": "batch"})
        journal.write_header({"task": "batch"})
        assert out.read_text() == HEAD
        journal.discard()
    assert not out.exists()
    journal = Journal.open(out)
    journal.write_header({"task": "batch"})
    journal.append({"id": "a", "content": "x"})
    journal.discard()
    assert out.read_text() == HEAD + '{"id":"a","content":"x"}\n'


@pytest.mark.parametrize(
    "tail", [b"\0" * 10, b'{"id": "b", "con' + b"\0" * 10], ids=["nul", "torn-nul"]
)
def test_a_nul_tail_is_cut_like_a_torn_line(tmp_path: Path, tail: bytes) -> None:
    """NUL bytes where the last write should be (a power cut) are a torn line."""
    out = tmp_path / "out.jsonl"
    good = HEAD.encode() + b'{"id": "a", "content": ""}\n'
    out.write_bytes(good + tail)
    with Journal.open(out) as journal:
        assert journal.state.repaired_bytes == len(tail)
        assert "a" in journal.state.done
        assert len(journal.state.done) == 1
    assert out.read_bytes() == good


def test_an_older_output_is_refused_unless_adopted(tmp_path: Path) -> None:
    """Result lines without a header: refused untouched; adopted, the header goes in front
    by an atomic rewrite and every line stays."""
    out = tmp_path / "out.jsonl"
    old = b'{"id": "a", "content": "x", "finish_reason": "stop"}\n'
    out.write_bytes(old)
    with pytest.raises(JournalError, match="no header line"):
        Journal.open(out)
    assert out.read_bytes() == old
    with Journal.open(out, adopt=True) as journal:
        assert journal.state.legacy
        journal.write_header({"task": "batch"})
        assert not journal.state.legacy
    assert out.read_bytes() == HEAD.encode() + old


def test_the_check_sees_the_file_before_any_error_line_goes(tmp_path: Path) -> None:
    """A check that refuses stops open before the retry rewrite: nothing changes."""
    out = tmp_path / "out.jsonl"
    out.write_text(HEAD + '{"id": "a", "error": {}}\n')
    before = out.read_bytes()

    def refuse(state: object) -> None:
        raise JournalError("no")

    with pytest.raises(JournalError, match="no"):
        Journal.open(out, retry_errors_for={"a"}, check=refuse)
    assert out.read_bytes() == before
    with Journal.open(out) as journal:
        assert journal.drop_errors({"a"}) == 1
        assert len(journal.state.done) == 0
    assert out.read_text() == HEAD

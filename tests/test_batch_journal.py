"""The crash-safe output file: whole lines only, torn tail repair, locking, atomic rewrite."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from lmlink.batch import JournalError
from lmlink.batch._journal import Journal


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


def test_reopening_reads_the_done_ids_and_which_are_errors(tmp_path: Path) -> None:
    """The state maps every id in the file to whether its line is an error."""
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "content": ""}\n{"id": "b", "error": {}}\n')
    with Journal.open(out) as journal:
        assert journal.state.done == {"a": False, "b": True}
        assert not journal.state.created


@pytest.mark.parametrize(
    "tail",
    [b'{"id": "c", "cont', b"{", b'{"id": "c", "content": ""}'],
    ids=["mid", "brace", "no-newline"],
)
def test_a_torn_last_line_is_cut_off_and_reported(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A last line without its newline (a killed write) is removed, with a warning."""
    out = tmp_path / "out.jsonl"
    good = b'{"id": "a", "content": ""}\n{"id": "b", "content": ""}\n'
    out.write_bytes(good + tail)
    with caplog.at_level(logging.WARNING, logger="lmlink"), Journal.open(out) as journal:
        assert journal.state.repaired_bytes == len(tail)
        assert set(journal.state.done) == {"a", "b"}
        journal.append({"id": "c", "content": "again"})
    assert out.read_bytes() == good + b'{"id":"c","content":"again"}\n'
    assert "torn line" in caplog.text


def test_a_file_that_is_not_batch_output_is_refused(tmp_path: Path) -> None:
    """A complete line that is not a result line means the wrong file: nothing is touched."""
    out = tmp_path / "notes.jsonl"
    out.write_text('{"id": "a"}\nhello world\n')
    with pytest.raises(JournalError, match="line 2 is not an lmlink result line"):
        Journal.open(out)
    assert out.read_text() == '{"id": "a"}\nhello world\n'


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
        '{"id": "a", "content": ""}\n{"id": "b", "error": {}}\n'
        '{"id": "c", "error": {}}\n{"id": "d", "content": ""}\n'
    )
    inode = os.stat(out).st_ino
    with Journal.open(out, retry_errors_for=["a", "b", "x"]) as journal:
        assert journal.state.done == {"a": False, "c": True, "d": False}
        assert journal.state.dropped == 1
        journal.append({"id": "b", "content": "fixed"})
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "c", "d", "b"]
    assert os.stat(out).st_ino != inode  # replaced by rename, not edited in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_the_rewritten_file_is_locked_too(tmp_path: Path) -> None:
    """After a retry rewrite the new file is the one that is locked."""
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "b", "error": {}}\n')
    with Journal.open(out, retry_errors_for=["b"]), pytest.raises(JournalError, match="another"):
        Journal.open(out)


def test_a_directory_is_not_an_output(tmp_path: Path) -> None:
    """Giving a directory as the output is a clear error."""
    with pytest.raises(JournalError, match="is a directory"):
        Journal.open(tmp_path)

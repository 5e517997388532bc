"""Outputs and caches the batch commands cannot use: ``-o -`` and a broken ``--cache`` are
refused with exit 2 and one line, before a request is sent or a file changes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from batch_helpers import prompts, read_jsonl, run_cli, write_jsonl
from lmlink.testing import FakeServer


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry of ``folder``: its bytes (None for a folder) and its mtime in ns."""
    return {
        p.name: (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
    }


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", ["batch", "embed"])
def test_output_dash_is_refused_with_exit_2_and_no_file(
    server: FakeServer, tmp_path: Path, command: str
) -> None:
    """``-o -`` would make a file named '-': it exits 2 with one line saying the output
    must be a file and why, sends nothing and writes nothing."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    before = _snapshot(tmp_path)
    result = run_cli(
        [command, str(src), "-o", "-", "-e", server.url, "-m", "fake-model"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "-o -: the output must be a file" in line
    assert "a re-run continues from it" in line
    assert "-o results.jsonl" in line  # what to do instead
    assert result.stdout == ""
    assert not (tmp_path / "-").exists()
    assert _snapshot(tmp_path) == before
    assert server.requests == []


def _garbage(path: Path) -> str:
    path.write_bytes(b"these are not the bytes of a database\n" * 50)
    return "not an SQLite database"


def _torn_sqlite(path: Path) -> str:
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    return "not a usable lmlink cache"


def _other_database(path: Path) -> str:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('keep me')")
    db.commit()
    db.close()
    return "database of something else"


def _directory(path: Path) -> str:
    path.mkdir()
    (path / "inside").write_text("x")
    return "is a directory"


def _missing_folder(path: Path) -> str:
    return "does not exist"


CACHES = {
    "garbage": (_garbage, "cache.sqlite"),
    "torn-sqlite": (_torn_sqlite, "cache.sqlite"),
    "other-database": (_other_database, "cache.sqlite"),
    "directory": (_directory, "cache.sqlite"),
    "missing-folder": (_missing_folder, "nowhere/cache.sqlite"),
}


@pytest.mark.parametrize("case", list(CACHES), ids=list(CACHES))
def test_an_unusable_cache_exits_2_with_one_line_and_changes_nothing(
    server: FakeServer, tmp_path: Path, case: str
) -> None:
    """A cache that cannot be used is bad settings (exit 2), like bad input: one line
    names it and says why; no request is sent, the output is not created, and no file
    (the cache included) changes."""
    make, name = CACHES[case]
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    cache = tmp_path / name
    why = make(cache)
    before = _snapshot(tmp_path)
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "--cache", str(cache)]
    result = run_cli([*args, "-e", server.url, "-m", "fake-model"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert str(cache) in line
    assert why in line
    assert server.requests == []
    assert not out.exists()
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any file")
def test_a_cache_that_cannot_be_written_exits_2(server: FakeServer, tmp_path: Path) -> None:
    """A cache file the user may not write is refused up front (exit 2, one line), not
    found out halfway through the run."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    cache = tmp_path / "cache.sqlite"
    sqlite3.connect(cache).close()
    cache.chmod(0o444)
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "--cache", str(cache)]
    result = run_cli([*args, "-e", server.url, "-m", "fake-model"])
    assert result.returncode == 2, result.stderr
    assert str(cache) in _one_line(result.stderr)
    assert not out.exists()
    assert server.requests == []


@pytest.mark.parametrize("start", ["new", "empty-file"])
def test_a_usable_cache_still_works(server: FakeServer, tmp_path: Path, start: str) -> None:
    """A new path and an empty file are fine caches: the second run answers from it."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    cache = tmp_path / "cache.sqlite"
    if start == "empty-file":
        cache.touch()
    for out in [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]:
        args = ["batch", str(src), "-o", str(out), "--cache", str(cache)]
        result = run_cli([*args, "-e", server.url, "-m", "fake-model"])
        assert result.returncode == 0, result.stderr
        assert len(read_jsonl(out)) == 3
        chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
        assert len(chats) == 3  # the second run sent none
    assert "3 from the cache" in result.stderr

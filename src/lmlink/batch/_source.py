"""Batch input read twice, never held: memory that does not grow with the number of rows.

:func:`scan_items` is the first pass: it reads the JSONL or CSV input row by row, checks
every row as :mod:`lmlink.batch._input` does, counts them and keeps 8 bytes per id (for the
duplicate check and for resuming), then raises :class:`BatchInputError` with every problem
and its line number, before anything is sent. The :class:`ItemSource` it returns is the
second pass: iterating it reads the input again and yields the :class:`BatchItem` of each
row, one at a time. Standard input and named pipes (``<(cmd)``) cannot be read twice, so
the first pass copies them to an unnamed temporary file.

A duplicate id is found by sorting the digests; the lines it is on (and that the strings
really are equal) are then confirmed by a third look at the input, only for those ids.
"""

from __future__ import annotations

import csv
import os
import stat
import sys
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ._doneset import DigestSet, digest
from ._input import (
    BatchInputError,
    BatchItem,
    ItemFormat,
    Problem,
    item_of,
    template_fields,
)

__all__ = ["ItemSource", "scan_items"]


class ItemSource:
    """Validated input that is read again, row by row, each time it is iterated.

    ``count`` rows, ``ids`` their digests (``"a1" in source.ids``).

    >>> source = scan_items("tickets.jsonl", ItemFormat())
    >>> source.count
    120000
    >>> for item in source: ...         # one BatchItem at a time
    """

    def __init__(
        self,
        name: str,
        fmt: ItemFormat,
        fields: list[str],
        count: int,
        ids: DigestSet,
        *,
        path: Path | None = None,
        spool: IO[bytes] | None = None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.count = count
        self.ids = ids
        self._fields = fields
        self._path = path
        self._spool = spool

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[BatchItem]:
        for line, row in _rows(self.name, self._open()):
            found = row if isinstance(row, Problem) else item_of(line, row, self.fmt, self._fields)
            if isinstance(found, BatchItem):
                yield found
                continue
            # Only if the file changed between the two passes.
            problem = found if isinstance(found, Problem) else Problem(line, found)
            raise BatchInputError.of(self.name, [problem])

    def _open(self) -> IO[bytes]:
        if self._spool is not None:
            self._spool.seek(0)
            return _Unclosed(self._spool)  # type: ignore[return-value]
        assert self._path is not None
        try:
            return open(self._path, "rb")
        except OSError as exc:
            raise BatchInputError.of(self.name, [_unreadable(exc)]) from exc

    def close(self) -> None:
        """Drop the copy of standard input, if there is one."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class _Unclosed:
    """A file whose close() leaves it open (the spool is read more than once)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._f)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        pass


def _unreadable(exc: OSError) -> Problem:
    return Problem(0, f"cannot read it: {exc.strerror or exc}")


def scan_items(source: str | Path, fmt: ItemFormat | None = None) -> ItemSource:
    """Check every row of a JSONL file, a CSV file (``.csv``) or stdin (``"-"``); raise
    :class:`BatchInputError` with every problem, or return the input, ready to be read.

    >>> source = scan_items("in.jsonl", ItemFormat(template="Classify: {text}"))
    """
    fmt = fmt or ItemFormat()
    name = str(source)
    fields: list[str] = []
    if fmt.template is not None:
        try:
            fields = template_fields(fmt.template)
        except ValueError as exc:
            raise BatchInputError.of(name, [Problem(0, f"--template: {exc}")]) from None
    spool: IO[bytes] | None = None
    path: Path | None = None
    try:
        if name == "-":
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the ItemSource
            reader: IO[bytes] = _Tee(sys.stdin.buffer, spool)  # type: ignore[assignment]
        else:
            path = Path(source)
            reader = open(path, "rb")  # noqa: SIM115 - closed by _rows
            if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                # A named pipe (``<(cmd)``, mkfifo) gives its rows once, as stdin does: a
                # second open would find it drained, or wait for a writer forever.
                spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the ItemSource
                reader = _Tee(reader, spool, owned=True)  # type: ignore[assignment]
                path = None
    except OSError as exc:
        raise BatchInputError.of(name, [_unreadable(exc)]) from exc
    problems: list[Problem] = []
    digests: array[int] = array("Q")
    count = 0

    def on_id(key: str) -> None:
        digests.append(digest(key))

    for line, row in _rows(name, reader):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        found = item_of(line, row, fmt, fields, on_id=on_id)
        if isinstance(found, str):
            problems.append(Problem(line, found))
        else:
            count += 1
    ids, twice = DigestSet.taking(digests)
    if len(twice):
        again = ItemSource(name, fmt, fields, 0, DigestSet(), path=path, spool=spool)
        problems = _with_duplicates(problems, _duplicates(again, DigestSet(twice)))
    if not count and not problems:
        problems.append(Problem(0, "no items: the input is empty"))
    if problems:
        if spool is not None:
            spool.close()
        raise BatchInputError.of(name, problems)
    return ItemSource(name, fmt, fields, count, ids, path=path, spool=spool)


def _duplicates(source: ItemSource, suspects: DigestSet) -> list[Problem]:
    """The rows whose id (one of ``suspects``) was on an earlier row, by a third read."""
    first: dict[str, int] = {}
    found = []
    for line, row in _rows(source.name, source._open()):
        raw = row.get("id") if isinstance(row, dict) else None
        if not isinstance(raw, str) or not raw.strip() or raw not in suspects:
            continue
        if raw in first:
            found.append(Problem(line, f"duplicate id {raw!r} (first on line {first[raw]})"))
        else:
            first[raw] = line
    return found


def _with_duplicates(problems: list[Problem], duplicates: list[Problem]) -> list[Problem]:
    """Both lists by line; a duplicate is all that is said of its line."""
    lines = {p.line for p in duplicates}
    kept = [p for p in problems if p.line not in lines]
    return sorted([*kept, *duplicates], key=lambda p: p.line)


class _Tee:
    """Reads ``src`` line by line and writes what it read to ``copy``."""

    def __init__(self, src: IO[bytes], copy: IO[bytes], *, owned: bool = False) -> None:
        self._src = src
        self._copy = copy
        self._owned = owned  # close ``src`` with the tee (not stdin)

    def __iter__(self) -> Iterator[bytes]:
        for line in self._src:
            self._copy.write(line)
            yield line
        self._copy.flush()

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._copy.write(data)
        return data

    def close(self) -> None:
        if self._owned:
            self._src.close()


def _rows(name: str, f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """``(line, row or Problem)`` of an open input, which is closed at the end."""
    try:
        if name.lower().endswith(".csv"):
            yield from _csv_rows(f)
        else:
            yield from _jsonl_rows(f)
    finally:
        f.close()


def _jsonl_rows(f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    for n, raw in enumerate(f, 1):
        line = raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw
        if not line.strip():
            continue
        try:
            yield n, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, Problem(n, f"not valid JSON: {exc}")


class _Text:
    """UTF-8 lines of a binary file for the csv module; a bad byte becomes a Problem."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: str | None = None
        self._first = True

    def __iter__(self) -> Iterator[str]:
        for raw in self._f:
            line = raw.removeprefix(b"\xef\xbb\xbf") if self._first else raw
            self._first = False
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.error = f"not UTF-8 text: {exc}"
                return


def _csv_rows(f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    # The csv module refuses fields over 128 KiB by default (a process-wide setting); a long
    # document in one cell is as valid here as in a JSONL line. Only ever raised, to the
    # file's own size.
    try:
        size = os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        size = 1 << 30
    if size > csv.field_size_limit():
        csv.field_size_limit(size)
    text = _Text(f)
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            if text.error:
                yield 0, Problem(0, text.error)
            return
        header = [h.strip() for h in header]
        if "id" not in header:
            yield 1, Problem(1, f"no 'id' column in the header (columns: {', '.join(header)})")
            return
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:  # which of the two cells is the text? not for us to guess
            named = ", ".join(repr(h) for h in twice)
            yield 1, Problem(1, f"the header names {named} twice; rename one column")
            return
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or row == [""]:
                continue
            if len(row) > len(header):
                yield start, Problem(start, f"{len(row)} fields, but the header has {len(header)}")
                continue
            yield start, dict(zip(header, row, strict=False))
    except csv.Error as exc:
        yield reader.line_num, Problem(reader.line_num, f"not valid CSV: {exc}")
    if text.error:
        yield reader.line_num + 1, Problem(reader.line_num + 1, text.error)

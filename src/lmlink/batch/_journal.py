"""The output file, written so that a crash at any moment loses at most the line being written.

Each result is one JSON line, written with a single ``os.write`` on an ``O_APPEND`` file
descriptor and then ``os.fsync``-ed, so the file only ever grows by whole lines, and a line
that was reported written is on disk. A process killed in the middle of a write (or a machine
that lost power) leaves at most one torn line at the end; :meth:`Journal.open` cuts it off
before anything else is appended, and reports it. Re-running then finds every finished id
and skips it.

The first line is the header record (:mod:`._header`): the file is lmlink's, and these
are its settings. An existing file that does not start with one is refused before a byte of
it changes, except an output of an older lmlink (result lines only), which is adopted
(rewritten with a header in front) when the caller allows it. A tail of NUL bytes (what
ext4 or XFS can leave of the last write after a power cut) is a torn line like any other.

Only one run may write a file at a time: the file is locked with ``flock`` (the lock goes
away with the process, however it dies). Rewriting the file (``--retry-errors``) writes a
temporary file, fsyncs it, renames it over the old one and fsyncs the directory, so either
the old or the new file is there, never half of one. The new file keeps the old one's mode
and owner, and a symlink given as the output is rewritten at its target; a file with other
hard links is not rewritten (a rename would split them).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lmlink import _json
from lmlink._errors import ConfigurationError
from lmlink._log import log

from ._header import HEADER_START, header_line, is_header, is_result_shaped

__all__ = ["Journal", "JournalError", "JournalState", "SettingsChangedError", "encode_record"]


class JournalError(ConfigurationError):
    """The output file cannot be used: it is not an lmlink batch output, it cannot be
    written, or another run is writing it (``busy``)."""

    busy: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.message, self.busy))


def _rebuild(message: str, busy: bool) -> JournalError:
    return JournalError(message, busy=busy)


class SettingsChangedError(JournalError):
    """The output holds answers made with other settings (another task, labels, template,
    model, sampling parameters...); ``changes`` names each difference. Nothing was sent or
    written. ``allow_changed_settings=True`` (``--allow-changed-settings``) adds to it anyway.

    >>> try:
    ...     lmlink.run_batch("in.jsonl", "out.jsonl", model="qwen3:8b", temperature=0.7)
    ... except lmlink.batch.SettingsChangedError as exc:
    ...     print(exc.changes)          # ["temperature none -> '0.7'"]
    """

    changes: list[str]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_changed, (self.message, self.changes))


def _rebuild_changed(message: str, changes: list[str]) -> SettingsChangedError:
    return SettingsChangedError(message, changes=changes)


@dataclass(slots=True)
class JournalState:
    """What an existing output file already holds.

    ``done`` maps each id to True when its line is an error; ``repaired_bytes`` is the size of
    the torn last line that was cut off (0 if none); ``dropped`` the error lines removed for
    a retry. ``header`` is the file's header record (None for a new or empty file);
    ``legacy`` is True for an output of an older lmlink, result lines without a header.
    """

    done: dict[str, bool] = field(default_factory=dict)
    repaired_bytes: int = 0
    dropped: int = 0
    created: bool = False
    header: dict[str, Any] | None = None
    legacy: bool = False


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One output line, newline included (integers past 64 bits written exactly)."""
    return _json.dumps_record(record) + b"\n"


class Journal:
    """An append-only JSONL file of results, one fsynced line per record.

    >>> journal = Journal.open("out.jsonl")
    >>> journal.state.done          # {"t1": False, "t2": True}: ids already there
    >>> journal.append({"id": "t3", "content": "..."})
    >>> journal.close()
    """

    def __init__(self, path: Path, fd: int, state: JournalState) -> None:
        self.path = path
        self._fd: int | None = fd
        self.state = state
        self.written = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        retry_errors_for: Collection[str] = (),
        adopt: bool = False,
        check: Callable[[JournalState], None] | None = None,
    ) -> Journal:
        """Open (or create) ``path``, lock it, cut off a torn last line, read the ids in it.

        The error lines of the ids in ``retry_errors_for`` are removed (the file is rewritten
        atomically), so those ids count as not done. A file without a header is refused,
        unless ``adopt`` is set and it holds only lmlink result lines (``state.legacy``).
        ``check`` sees the state before any line is removed, and may refuse by raising.
        """
        path = Path(path)
        if path.is_dir():
            raise JournalError(f"{path} is a directory; give a file for the output")
        if path.exists() and not path.is_file():
            raise JournalError(f"{path} is not a regular file (a device or a pipe); give a file")
        fd, created = _open_locked(path)
        try:
            state = _read(path, fd, adopt=adopt)
            state.created = created
            if created:
                _fsync_dir(path)
            if check is not None:
                check(state)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            if isinstance(exc, OSError):
                raise JournalError(f"cannot use {path}: {exc.strerror or exc}") from exc
            raise
        journal = cls(path, fd, state)
        try:
            journal.drop_errors(retry_errors_for)
        except BaseException:
            journal.close()
            raise
        return journal

    def drop_errors(self, ids: Collection[str]) -> int:
        """Remove the error lines of ``ids`` (the file is rewritten atomically), so those
        ids count as not done; returns how many were removed."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        drop = {i for i in ids if self.state.done.get(i)}
        if not drop:
            return 0
        try:
            # The old file stays locked until the new one, locked too, is in its place.
            new_fd = _rewrite(self.path, drop)
        except OSError as exc:
            raise JournalError(f"cannot use {self.path}: {exc.strerror or exc}") from exc
        os.close(self._fd)
        self._fd = new_fd
        for i in drop:
            del self.state.done[i]
        self.state.dropped += len(drop)
        return len(drop)

    def write_header(self, settings: Mapping[str, Any]) -> None:
        """Put the header with ``settings`` first in a file that has none: appended to an
        empty file, or the file rewritten with it in front (an adopted older output). A
        file with a header but no result yet (a run that never got an answer) gets the new
        settings: there is nothing they could be mixed with."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        line = header_line(settings)
        header = self.state.header
        if header is not None and not self.state.done and header.get("settings") != settings:
            os.ftruncate(self._fd, 0)  # a crash here leaves an empty file: a new output
            self.state.header = None
        if self.state.legacy:
            new_fd = _rewrite(self.path, set(), header=line)
            os.close(self._fd)
            self._fd = new_fd
            self.state.legacy = False
        elif self.state.header is None:
            os.write(self._fd, line)  # a torn header is cut by the next open
            os.fsync(self._fd)
        else:
            return
        self.state.header = orjson.loads(line)

    def discard(self) -> None:
        """Remove a file this run created and wrote no result to, then close it."""
        if self._fd is not None and self.state.created and self.written == 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.close()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and wait until it is on disk."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        data = memoryview(encode_record(record))
        while data:  # one write in practice; a short write only on a full disk or a signal
            written = os.write(self._fd, data)
            data = data[written:]
        os.fsync(self._fd)
        self.written += 1

    def close(self) -> None:
        """Release the lock and the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(fd: int, path: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - no flock; one writer is up to the user
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalError(
            f"{path} is being written by another lmlink run; wait for it or pick another output",
            busy=True,
        ) from None


def _open_locked(path: Path) -> tuple[int, bool]:
    """An O_APPEND descriptor on ``path``, locked, and whether the file was created."""
    for _ in range(10):  # bounded: another run renaming the file under us, over and over
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            _lock(fd, path)
            # A rewrite may have renamed a new file over the one we opened: lock the real one.
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, created
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise JournalError(f"{path} keeps being replaced by another process")


_TORN = b'{"'  # how every result line starts (a JSON object with string keys)


_NOT_JSON = object()


def _value(data: bytes) -> Any:
    """The JSON value in ``data``, or ``_NOT_JSON``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _record(value: Any) -> dict[str, Any] | None:
    """``value`` if it is a result record, else None."""
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value
    return None


def _foreign(path: Path, where: str) -> JournalError:
    return JournalError(
        f"{path} {where} is not an lmlink result line; is it the right output file? "
        "(it was left as it is)"
    )


def _read(path: Path, fd: int, *, adopt: bool = False) -> JournalState:
    """Every id in the file. Nothing is changed until the whole file is known to be lmlink
    output: then a torn last line is cut off, or a whole one missing its newline ended."""
    state = JournalState()
    data = _read_all(fd)
    # A power cut can leave the last write as NUL bytes: they belong to the torn tail.
    end = data.rstrip(b"\0").rfind(b"\n") + 1
    records = []
    first: int | None = None  # the line number of the first line that is not blank
    for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if line.strip():
            value = _value(line)
            if first is None:
                first = n
                if is_header(value):
                    state.header = value
                    continue
            record = _record(value)
            if record is None:
                raise _foreign(path, f"line {n}")
            records.append(record)
    tail = data[end:]
    text = tail.rstrip(b"\0")
    value = _value(text) if text.strip() else _NOT_JSON
    whole_tail = False
    if value is not _NOT_JSON:
        if first is None and is_header(value):
            state.header = value  # killed before its newline
        else:
            last = _record(value)
            if last is None:
                raise _foreign(path, "ends in a line that")
            records.append(last)  # killed between the record and its newline: it is whole
        whole_tail = True
    elif text.strip():
        # Only a header can be torn in a file with no whole line; else a result line.
        torn = _TORN if first is not None else HEADER_START
        if not (text.startswith(torn) or torn.startswith(text)):
            raise _foreign(path, "ends in a line that")
    if state.header is None and records:
        if not all(is_result_shaped(r) for r in records):
            raise JournalError(
                f"{path} is not an lmlink batch output (it does not start with lmlink's "
                "header line); pick another output (it was left as it is)"
            )
        if not adopt:
            raise JournalError(
                f"{path} holds lmlink results but no header line (an output of an older "
                "lmlink); run again with --allow-changed-settings (allow_changed_settings=True) "
                "to continue it: a header with this run's settings is put in front, "
                "nothing else changes"
            )
        state.legacy = True
    if whole_tail:
        os.write(fd, b"\n")
        os.fsync(fd)
    elif tail:
        state.repaired_bytes = len(tail)
        os.ftruncate(fd, end)
        os.fsync(fd)
        log.warning(
            "lmlink: %s ended in a torn line (%d bytes, from a run that was killed); removed it",
            path,
            state.repaired_bytes,
        )
    done = state.done
    repeated = 0
    for record in records:
        failed = "error" in record
        before = done.get(record["id"])
        if before is not None:
            repeated += 1
            failed = failed and before  # one answer is enough: the id is done
        done[record["id"]] = failed
    if repeated:
        log.warning(
            "lmlink: %s has %d lines for ids it already holds (files joined by hand?); "
            "an id with any answer counts as done",
            path,
            repeated,
        )
    return state


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)  # reads start here; O_APPEND still sends writes to the end
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 24):
        chunks.append(chunk)
    return b"".join(chunks)


def _rewrite(path: Path, drop: set[str], *, header: bytes = b"") -> int:
    """Replace ``path`` by a copy without the error lines of ``drop`` (and ``header`` in
    front); return a locked O_APPEND descriptor on the new file. A symlink is followed: its
    target is replaced, with the same mode and owner."""
    target = Path(os.path.realpath(path))
    before = os.stat(target)
    if before.st_nlink > 1:
        raise JournalError(
            f"{path} has {before.st_nlink} hard links, and rewriting it would split them; "
            "copy it to a file of its own and use that (nothing was changed)"
        )
    with open(target, "rb") as src:
        kept = [
            line for line in src.read().split(b"\n") if line.strip() and not _is_dropped(line, drop)
        ]
    tmp, fd = _create_temp(target)
    try:
        _lock(fd, tmp)
        _same_owner_and_mode(fd, before, path)
        payload = header + b"".join(line + b"\n" for line in kept)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.replace(tmp, target)
        _fsync_dir(target)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return fd


def _same_owner_and_mode(fd: int, before: os.stat_result, path: Path) -> None:
    """Give the new file the owner and permissions of the one it replaces."""
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) != (before.st_uid, before.st_gid):
        try:
            os.fchown(fd, before.st_uid, before.st_gid)
        except PermissionError:
            raise JournalError(
                f"cannot rewrite {path}: its copy could not keep the file's owner "
                "(nothing was changed)"
            ) from None
    os.fchmod(fd, stat.S_IMODE(before.st_mode))  # after chown, which may clear set-id bits


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new file next to ``path`` with a name nobody could guess: created with O_EXCL, so
    a file or symlink planted there is never followed or overwritten."""
    import secrets

    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(10):  # bounded: a clash of 64 random bits, ten times over
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o644)
        except FileExistsError:
            continue
    raise JournalError(f"cannot create a temporary file next to {path}")


def _is_dropped(line: bytes, drop: set[str]) -> bool:
    record = orjson.loads(line.rstrip(b"\0"))
    return isinstance(record, dict) and record.get("id") in drop and "error" in record


def _fsync_dir(path: Path) -> None:
    """Make the directory entry of ``path`` durable (a new file, a rename)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""The output file, written so that a crash at any moment loses at most the lines being written.

Results are JSON lines, written with a single ``os.write`` on an ``O_APPEND`` file descriptor
(:meth:`Journal.write`, one line or a group of them) and then ``os.fsync``-ed
(:meth:`Journal.sync`), so the file only ever grows by whole lines, and a line is counted as
written only once the fsync that covers it has returned. The batch runner commits in groups
(:mod:`lmlink.batch._commit`). A process killed in the middle of a write (or a machine
that lost power) leaves at most one torn line at the end; :meth:`Journal.open` cuts it off
before anything else is appended, and reports it. Re-running then finds every finished id
and skips it. Opening reads the file once, line by line, and keeps 8 bytes per id
(:class:`~lmlink.batch._doneset.DoneSet`), whatever the size of the file.

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
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lmlink import _json
from lmlink._errors import ConfigurationError
from lmlink._log import log

from ._doneset import DigestSet, DoneSet, digest
from ._header import (
    BATCH_OUTPUT,
    EMBED_OUTPUT,
    FORMAT,
    HEADER_STARTS,
    header_kind,
    header_line,
    is_header,
    is_result_shaped,
)

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

    ``done`` holds every id with a line (``id in done``; ``done.failed(id)`` when its only
    lines are errors), 8 bytes per id; ``repaired_bytes`` is the size of the torn last line
    that was cut off (0 if none); ``dropped`` the ids whose error lines were removed for a
    retry. ``header`` is the file's header record (None for a new or empty file);
    ``legacy`` is True for an output of an older lmlink, result lines without a header.
    """

    done: DoneSet = field(default_factory=DoneSet)
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

    def __init__(self, path: Path, fd: int, state: JournalState, kind: str = BATCH_OUTPUT) -> None:
        self.path = path
        self.kind = kind
        self._fd: int | None = fd
        self.state = state
        self.written = 0
        self._was_empty = False  # the header went into a file that was empty before

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        retry_errors_for: Collection[str] | DigestSet = (),
        adopt: bool = False,
        check: Callable[[JournalState], None] | None = None,
        kind: str = BATCH_OUTPUT,
    ) -> Journal:
        """Open (or create) ``path``, lock it, cut off a torn last line, read the ids in it.

        The error lines of the ids in ``retry_errors_for`` are removed (the file is rewritten
        atomically), so those ids count as not done. A file without a header is refused,
        unless ``adopt`` is set and it holds only lmlink result lines (``state.legacy``).
        ``check`` sees the state before any line is removed, and may refuse by raising.
        ``kind`` is the output this run writes: a file of the other kind is refused.
        """
        path = Path(path)
        if path.is_dir():
            raise JournalError(f"{path} is a directory; give a file for the output")
        if path.exists() and not path.is_file():
            raise JournalError(f"{path} is not a regular file (a device or a pipe); give a file")
        fd, created = _open_locked(path)
        try:
            state = _read(path, fd, adopt=adopt, kind=kind)
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
        journal = cls(path, fd, state, kind)
        try:
            journal.drop_errors(retry_errors_for)
        except BaseException:
            journal.close()
            raise
        return journal

    def drop_errors(self, ids: Collection[str] | DigestSet) -> int:
        """Remove the error lines of ``ids`` (id strings or a
        :class:`~lmlink.batch._doneset.DigestSet`; the file is rewritten atomically), so
        those ids count as not done; returns how many were removed."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        drop = _failed_among(self.state.done, ids)
        if not len(drop):
            return 0
        try:
            # The old file stays locked until the new one, locked too, is in its place.
            new_fd = _rewrite(self.path, drop)
        except OSError as exc:
            raise JournalError(f"cannot use {self.path}: {exc.strerror or exc}") from exc
        os.close(self._fd)
        self._fd = new_fd
        self.state.done = self.state.done.without_errors(drop)
        self.state.dropped += len(drop)
        return len(drop)

    def write_header(self, settings: Mapping[str, Any]) -> None:
        """Put the header with ``settings`` first in a file that has none: appended to an
        empty file, or the file rewritten with it in front (an adopted older output). A
        file with a header but no result yet (a run that never got an answer) gets the new
        settings: there is nothing they could be mixed with."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        line = header_line(settings, self.kind)
        header = self.state.header
        if header is not None and not len(self.state.done) and header.get("settings") != settings:
            os.ftruncate(self._fd, 0)  # a crash here leaves an empty file: a new output
            self.state.header = None
        if self.state.legacy:
            new_fd = _rewrite(self.path, DigestSet(), header=line)
            os.close(self._fd)
            self._fd = new_fd
            self.state.legacy = False
        elif self.state.header is None:
            self._was_empty = os.fstat(self._fd).st_size == 0
            os.write(self._fd, line)  # a torn header is cut by the next open
            os.fsync(self._fd)
        else:
            return
        self.state.header = orjson.loads(line)

    def discard(self) -> None:
        """Remove a file this run created and wrote no result to (or empty again one that
        was empty before), then close it."""
        if self._fd is not None and self.written == 0:
            with contextlib.suppress(OSError):
                if self.state.created:
                    self.path.unlink()
                elif self._was_empty:  # the user's empty file: as it was, mode and all
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
        self.close()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and wait until it is on disk."""
        self.write([encode_record(record)])
        self.sync()

    def write(self, lines: list[bytes]) -> None:
        """Append whole ``lines`` (each ending in a newline) in one write; they are on disk
        once :meth:`sync` returns."""
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        data = memoryview(lines[0] if len(lines) == 1 else b"".join(lines))
        while data:  # one write in practice; a short write only on a full disk or a signal
            written = os.write(self._fd, data)
            data = data[written:]
        self.written += len(lines)

    def sync(self) -> None:
        """Wait until everything written is on disk (safe to call from another thread
        while the event loop goes on; :meth:`close` only after it returned)."""
        fd = self._fd
        if fd is None:
            raise JournalError(f"{self.path} is closed")
        os.fsync(fd)

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


def _lines(fd: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line, whole)`` for every line of the file, read in 1 MiB blocks: ``whole``
    is False only for a last line without its newline."""
    os.lseek(fd, 0, os.SEEK_SET)  # reads start here; O_APPEND still sends writes to the end
    offset = 0
    rest = b""
    while block := os.read(fd, 1 << 20):
        data = rest + block if rest else block
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield offset + start, data[start:end], True
            start = end + 1
        offset += start
        rest = data[start:]
    if rest:
        yield offset, rest, False


_MADE_BY = {BATCH_OUTPUT: "`lmlink batch` (chat answers)", EMBED_OUTPUT: "`lmlink embed`"}


def _read(path: Path, fd: int, *, adopt: bool = False, kind: str = BATCH_OUTPUT) -> JournalState:
    """Every id in the file, read line by line into a compact set. Nothing is changed until
    the whole file is known to be lmlink output: then a torn last line is cut off, or a
    whole one missing its newline ended."""
    state = JournalState()
    ok: array[int] = array("Q")
    errors: array[int] = array("Q")
    lines = 0  # result lines
    shaped = True  # every result line looks like lmlink's (for adopting an older output)
    first: int | None = None  # the line number of the first line that is not blank
    tail = b""
    end = 0
    for n, (offset, line, whole) in enumerate(_lines(fd), 1):
        if not whole:
            tail, end = line, offset
            break
        end = offset + len(line) + 1
        if not line.strip():
            continue
        value = _value(line)
        if first is None:
            first = n
            if is_header(value):
                state.header = value
                continue
        record = _record(value)
        if record is None:
            raise _foreign(path, f"line {n}")
        shaped = shaped and is_result_shaped(record)
        (errors if "error" in record else ok).append(digest(record["id"]))
        lines += 1
    # A power cut can leave the last write as NUL bytes: they belong to the torn tail.
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
            # killed between the record and its newline: it is whole
            shaped = shaped and is_result_shaped(last)
            (errors if "error" in last else ok).append(digest(last["id"]))
            lines += 1
        whole_tail = True
    elif text.strip():
        # Only a header can be torn in a file with no whole line; else a result line.
        starts = (_TORN,) if first is not None else HEADER_STARTS
        if not any(text.startswith(torn) or torn.startswith(text) for torn in starts):
            raise _foreign(path, "ends in a line that")
    if state.header is None and lines:
        if not shaped or kind != BATCH_OUTPUT:
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
    made = state.header.get("format") if state.header is not None else FORMAT
    if not isinstance(made, int) or isinstance(made, bool) or made > FORMAT:
        # A later lmlink's lines may mean something else: resuming, rewriting or adopting
        # it here would mix two formats in one file.
        raise JournalError(
            f"{path} was written by a newer lmlink (output format {made}; this one knows "
            f"format {FORMAT}); upgrade lmlink, or pick another output (it was left as it is)"
        )
    made_by = header_kind(state.header)
    if made_by is not None and made_by != kind:
        # Vectors and chat answers in one file: no reader could tell what a line means.
        raise JournalError(
            f"{path} is an output of {_MADE_BY.get(made_by, made_by)}; "
            f"{_MADE_BY.get(kind, kind)} does not add to it: pick another output "
            "(it was left as it is)"
        )
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
    state.done = DoneSet.of(ok=ok, errors=errors)
    repeated = lines - len(state.done)
    if repeated:
        log.warning(
            "lmlink: %s has %d lines for ids it already holds (files joined by hand?); "
            "an id with any answer counts as done",
            path,
            repeated,
        )
    return state


def _failed_among(done: DoneSet, ids: Collection[str] | DigestSet) -> DigestSet:
    """The ids of ``ids`` whose only lines in the file are errors."""
    if not len(done.errors) or not len(ids):
        return DigestSet()
    wanted = ids if isinstance(ids, DigestSet) else DigestSet.of(digest(i) for i in ids)
    return DigestSet.of(d for d in done.errors if d in wanted)


def _rewrite(path: Path, drop: DigestSet, *, header: bytes = b"") -> int:
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
    tmp, fd = _create_temp(target)
    try:
        _lock(fd, tmp)
        _same_owner_and_mode(fd, before, path)
        _copy_without(target, fd, drop, header)  # in blocks: memory does not grow with it
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


def _copy_without(src_path: Path, fd: int, drop: DigestSet, header: bytes) -> None:
    """Write ``header`` and every line of ``src_path`` but the error lines of ``drop``."""
    block: list[bytes] = [header] if header else []
    size = len(header)
    with open(src_path, "rb") as src:
        for line in src:
            if not line.strip() or _is_dropped(line, drop):
                continue
            block.append(line if line.endswith(b"\n") else line + b"\n")
            size += len(line)
            if size >= 1 << 20:
                _write_all(fd, b"".join(block))
                block, size = [], 0
    _write_all(fd, b"".join(block))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_dropped(line: bytes, drop: DigestSet) -> bool:
    if not len(drop):
        return False
    record = _value(line.rstrip(b"\n").rstrip(b"\0"))
    return (
        isinstance(record, dict)
        and isinstance(record.get("id"), str)
        and "error" in record
        and record["id"] in drop
    )


def _fsync_dir(path: Path) -> None:
    """Make the directory entry of ``path`` durable (a new file, a rename)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

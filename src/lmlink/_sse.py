"""Incremental decoder for server-sent events (``text/event-stream``).

:class:`SSEDecoder` implements the WHATWG "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
as a pure state machine: bytes go in through :meth:`SSEDecoder.feed`, finished
:class:`SSEEvent` objects come out. It does no I/O, so the same code serves the sync and
async transports and is tested without a server.

Design, driven by the streaming hot path (one event per generated token):

* It works on ``bytes`` throughout. Every byte that matters to the syntax (CR, LF, ``:``,
  space) is ASCII, and in UTF-8 an ASCII byte never occurs inside a multi-byte sequence, so
  splitting the raw bytes gives exactly the lines the spec gets after decoding. ``data`` stays
  bytes because the caller hands it straight to ``orjson.loads``; only the rare ``event`` and
  ``id`` values are decoded (with U+FFFD replacement, as the spec's decoder does).
* Line splitting is done by C code per chunk (``bytes.split``), not per byte or per line
  with a regex. Chunks holding a CR are first normalised to LF with two ``replace`` calls;
  LF-only streams (nearly all of them) skip that. A CR that ends a chunk is remembered so an
  LF that starts the next chunk is taken as the second half of the same CRLF.
* An unfinished line is kept as a list of pieces and joined only once its line ending
  arrives, so a long line trickling in through small chunks costs linear, not quadratic, time.
* ``data: ...`` lines are matched by a prefix test before any general field parsing.

Deviations and additions, for real servers:

* A field named ``error`` (legacy llama.cpp) is read as ``data`` plus ``event: error``.
* ``id`` and ``retry`` are stream state, as in the spec: each event carries the last id and
  the last reconnection time seen so far (``None`` until one arrives), even if set in an
  earlier block that had no data.
* Size caps keep memory bounded against a broken or hostile server: a line (finished or not)
  longer than ``max_line`` bytes, or one event whose data buffer grows past
  ``16 * max_line`` bytes, raises :class:`~lmlink._errors.ResponseTooLargeError` as soon as
  it is seen. The decoder is then spent: every later :meth:`~SSEDecoder.feed` raises again.
"""

from __future__ import annotations

from contextlib import suppress
from typing import NamedTuple, NoReturn

from ._errors import ConfigurationError, ResponseTooLargeError

__all__ = ["SSEDecoder", "SSEEvent"]

_BOM = b"\xef\xbb\xbf"
_DATA_CAP_LINES = 16


class SSEEvent(NamedTuple):
    """One dispatched event.

    ``event`` is the type (``"message"`` unless an ``event:`` field named one), ``data`` the
    data lines joined with ``b"\\n"`` as raw UTF-8 bytes, ``id`` the last event id seen on the
    stream so far and ``retry`` the last reconnection time (ms) seen so far.
    """

    event: str = "message"
    data: bytes = b""
    id: str | None = None
    retry: int | None = None


# Building the tuple directly skips the Python-level ``__new__`` NamedTuple generates.
_new_event = tuple.__new__


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


class SSEDecoder:
    """Turns the bytes of an event stream, in chunks of any size, into :class:`SSEEvent`.

    >>> dec = SSEDecoder()
    >>> dec.feed(b'data: {"a": 1}\\n')
    []
    >>> dec.feed(b"\\n")
    [SSEEvent(event='message', data=b'{"a": 1}', id=None, retry=None)]
    >>> dec.close()
    []
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_cap",
        "_data_len",
        "_error",
        "_event",
        "_id",
        "_max_line",
        "_partial",
        "_partial_len",
        "_retry",
        "_skip_lf",
        "_slow",
    )

    def __init__(self, max_line: int = 1 << 20) -> None:
        if max_line < 1:
            raise ConfigurationError(f"max_line must be a positive number of bytes, not {max_line}")
        self._max_line = max_line
        self._data_cap = _DATA_CAP_LINES * max_line
        # Pieces of the line still waiting for its line ending, and their total length.
        self._partial: list[bytes] = []
        self._partial_len = 0
        # The previous chunk ended with CR: an LF opening the next one completes that CRLF.
        self._skip_lf = False
        # Nothing but a possible prefix of the BOM has been seen yet.
        self._at_start = True
        # Any of the above (or a spent decoder): feed() must take its slow start.
        self._slow = True
        # The event being built: its data lines, their size as the spec counts it (each
        # line plus its "\n") and its type (None means "message").
        self._data: list[bytes] = []
        self._data_len = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._error: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Take the next ``chunk`` of the stream; return the events it completed, in order.

        Raises :class:`~lmlink._errors.ResponseTooLargeError` when a size cap is passed.
        """
        if self._slow:
            chunk = self._prepare(chunk)
            if not chunk:
                return []
        # An int needle is a plain memchr; a bytes needle costs ten times more here.
        if 13 in chunk:
            if chunk[-1] == 13:
                self._skip_lf = self._slow = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        max_line = self._max_line
        if tail:
            if len(tail) > max_line:
                self._fail_line(len(tail))
            self._partial.append(tail)
            self._partial_len = len(tail)
            self._slow = True
        if not lines:
            return []
        if len(chunk) > max_line:
            longest = max(map(len, lines))
            if longest > max_line:
                self._fail_line(longest)

        events: list[SSEEvent] = []
        data = self._data
        data_len = self._data_len
        data_cap = self._data_cap
        event = self._event
        for line in lines:
            if not line:
                if data:
                    events.append(
                        _new_event(
                            SSEEvent,
                            (event or "message", b"\n".join(data), self._id, self._retry),
                        )
                    )
                    data = []
                    data_len = 0
                event = None
                continue
            if line.startswith(b"data: "):
                value = line[6:]
                data_len += len(value) + 1
                if data_len > data_cap:
                    self._fail_data()
                data.append(value)
                continue
            colon = line.find(b":")
            if colon == 0:
                continue
            if colon < 0:
                name = line
                value = b""
            else:
                name = line[:colon]
                colon += 1
                value = line[colon + 1 :] if line[colon : colon + 1] == b" " else line[colon:]
            if name in {b"data", b"error"}:
                if name == b"error":
                    event = "error"
                data_len += len(value) + 1
                if data_len > data_cap:
                    self._fail_data()
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
            elif name == b"id":
                if 0 not in value:
                    self._id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():
                # Past Python's int-parsing digit limit there is no usable delay: ignore it
                # like any other invalid value.
                with suppress(ValueError):
                    self._retry = int(value)
        self._data = data
        self._data_len = data_len
        self._event = event
        return events

    def close(self) -> list[SSEEvent]:
        """Signal the end of the stream.

        The spec discards an event whose blank line never came, so this returns ``[]``; it is
        the one place callers handle EOF. Pending state is dropped.
        """
        self._partial.clear()
        self._partial_len = 0
        self._skip_lf = False
        self._slow = self._at_start or self._error is not None
        self._data = []
        self._data_len = 0
        self._event = None
        return []

    def _prepare(self, chunk: bytes) -> bytes:
        """The slow start of :meth:`feed`: ``chunk`` with the pending state worked in.

        Returns the bytes to split into lines: ``chunk`` behind the pending start of its
        line, minus a BOM or the LF of a split CRLF; ``b""`` when nothing is left to split.
        """
        if self._error is not None:
            raise ResponseTooLargeError(self._error)
        if not chunk:
            return chunk
        self._slow = False
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        partial = self._partial
        if self._at_start:
            head = b"".join(partial) + chunk
            partial.clear()
            self._partial_len = 0
            if len(head) < len(_BOM) and _BOM.startswith(head):
                # Too short to tell whether the stream opens with a BOM.
                if head:
                    partial.append(head)
                    self._partial_len = len(head)
                self._slow = True
                return b""
            self._at_start = False
            return head[len(_BOM) :] if head.startswith(_BOM) else head
        if not partial:
            return chunk
        partial.append(chunk)
        if 10 in chunk or 13 in chunk:
            joined = b"".join(partial)
            partial.clear()
            self._partial_len = 0
            return joined
        self._partial_len += len(chunk)
        if self._partial_len > self._max_line:
            self._fail_line(self._partial_len)
        self._slow = True
        return b""

    def _fail_line(self, length: int) -> NoReturn:
        self._fail(
            f"SSE line over {_size(self._max_line)}; the server sent at least {length} bytes "
            "without a line break. Is this really an event stream? If lines this long are "
            "expected, raise the line limit."
        )

    def _fail_data(self) -> NoReturn:
        self._fail(
            f"SSE event data over {_size(self._data_cap)}; the server kept sending data lines "
            "without the blank line that ends an event. If events this large are expected, "
            "raise the line limit (the event limit is 16 times it)."
        )

    def _fail(self, message: str) -> NoReturn:
        # Free the buffers now: the caller may keep the spent decoder around.
        self._partial.clear()
        self._partial_len = 0
        self._data = []
        self._data_len = 0
        self._error = message
        self._slow = True
        raise ResponseTooLargeError(message)

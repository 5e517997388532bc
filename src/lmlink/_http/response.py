"""Sans-I/O HTTP/1.1 for the transports: the response parser.

Nothing here touches a socket (the request side is :mod:`lmlink._http.request`).
:class:`ResponseParser` is an incremental state machine: the sync and async shells
(``sync`` and ``aio``) push whatever bytes they received into
:meth:`ResponseParser.feed` (and :meth:`~ResponseParser.feed_eof` at EOF), then read its
public state: ``head_done``, the parsed head, ``body`` (a list of decoded body pieces the
shell drains with :meth:`~ResponseParser.take`), ``done`` and ``keep_alive``. The logic is
written once and tested without a server; the shells only do I/O, timeouts and pooling. The
parser is built for the streaming hot path (one small chunk per generated token): it works on
``bytes`` with ``find`` and slicing, never a regex, emits chunk data without copying it when
a read holds exactly the rest of a chunk, and buffers only incomplete head or chunk-size
lines (both capped). Framing follows RFC 9112 section 6.3; lenient where real servers are
sloppy (bare LF line endings, section 2.2) and strict where sloppiness could desynchronise a
reused connection (such a connection is simply not reused).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NoReturn

from lmlink._errors import APIConnectionError, DecodeError, ResponseTooLargeError

__all__ = ["MAX_HEAD", "ResponseParser"]

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64 * 1024

_HEAD, _LENGTH, _CHUNKED, _TRAILERS, _UNTIL_EOF, _DONE = range(6)
_HEX = b"0123456789abcdefABCDEF"
_WS = " \t\r"
_SP_TAB = ("", " ", "\t")
_SIZES: dict[bytes, int] = {}  # chunk-size line (with its CR) -> size, filled as seen
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """Where the head ends and the body starts, or (-1, -1)."""
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return end, end + 4
    # Bare-LF heads (RFC 9112 section 2.2): the first blank line, however it is written.
    end = data.find(b"\n\n", start)
    other = data.find(b"\n\r\n", start)
    if other >= 0 and (end < 0 or other < end):
        return other, other + 3
    return end, end + 2 if end >= 0 else -1


def _other_version(version: str) -> bool:
    return len(version) == 8 and version.startswith("HTTP/1.") and version[7].isdigit()


class _Decoder:
    """Undoes a gzip/deflate content coding, bounded by the parser's ``limit``."""

    __slots__ = ("_coding", "_obj", "_started", "size")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._obj = zlib.decompressobj(_CODINGS[coding])
        self._started = False
        self.size = 0

    def decode(self, data: bytes, limit: int | None, where: str) -> bytes:
        budget = 0 if limit is None else max(limit - self.size + 1, 1)
        try:
            out = self._obj.decompress(data, budget)
        except zlib.error as exc:
            # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate.
            if self._started or self._coding != "deflate":
                raise DecodeError(f"{self._coding} body from {where} is corrupt: {exc}") from exc
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            self._started = True
            return self.decode(data, limit, where)
        self._started = True
        self.size += len(out)
        if limit is not None and (self.size > limit or self._obj.unconsumed_tail):
            raise ResponseTooLargeError(
                f"response body from {where} is over the {limit}-byte limit once decompressed"
            )
        return out

    def flush(self, where: str) -> bytes:
        if not self._obj.eof and self._started:
            raise DecodeError(f"{self._coding} body from {where} ends before its end marker")
        return self._obj.flush()


class ResponseParser:
    """Incremental parser for one HTTP/1.1 response; see the module docstring for its use."""

    __slots__ = (
        "_buf",
        "_head",
        "_remaining",
        "_state",
        "_trailer_size",
        "body",
        "content_length",
        "decoder",
        "done",
        "head_done",
        "headers",
        "http_version",
        "keep_alive",
        "limit",
        "no_body",
        "pending",
        "reason",
        "received",
        "redact",
        "status",
        "where",
    )

    def __init__(
        self,
        where: str,
        no_body: bool = False,
        limit: int | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.where = where  # "host:port", for messages
        # Blanks the API key in quoted server bytes, before they are cut to length (a key
        # cut in half would no longer match).
        self.redact = redact
        self.no_body = no_body  # a HEAD request: the response has no body (section 6.3)
        self.received = False  # any byte at all arrived (a stale pooled connection has none)
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.status = 0
        self.reason = ""
        self.http_version = ""
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None
        self.body: list[bytes] = []  # decoded body pieces not yet taken
        self.pending = 0  # bytes in ``body``
        # The decompressed-size cap, from the first byte (``read(limit)`` may lower it):
        # gzip bytes that arrive with the head or in a stream are bounded too.
        self.limit = limit
        self._state = _HEAD
        self._buf = b""  # an incomplete chunk-size or trailer line
        self._head = bytearray()  # an incomplete head
        self._remaining = 0
        self.decoder: _Decoder | None = None
        self._trailer_size = 0

    def take(self) -> bytes:
        """All body bytes decoded so far and not yet taken (``b""`` if none)."""
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.pending = 0
        return data

    def feed(self, data: bytes) -> None:
        """Parse the next bytes read from the connection."""
        self.received = True
        state = self._state
        if state == _CHUNKED:
            self._feed_chunked(data)
        elif state == _LENGTH:
            self._feed_length(data)
        elif state == _HEAD:
            self._feed_head(data)
        elif state == _UNTIL_EOF:
            self._emit(data)
        elif state == _TRAILERS:
            self._feed_trailers(data)
        elif data:
            self.keep_alive = False  # bytes after the response: never reuse this connection

    def feed_eof(self) -> None:
        """The server closed its side. Ends a close-delimited body; anything else is cut."""
        state = self._state
        if state == _UNTIL_EOF:
            self._finish()
        elif state == _HEAD:
            what = "in the middle of the response head" if self.received else "without a response"
            self._fail(f"{self.where} closed the connection {what}", "closed")
        elif state != _DONE:
            if state == _LENGTH:
                assert self.content_length is not None
                got = self.content_length - self._remaining
                what = f"after {got} of {self.content_length} body bytes"
            else:
                what = "in the middle of a chunked body"
            self._fail(f"{self.where} closed the connection {what}", "closed")
        self.keep_alive = False

    # -- head ---------------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        buf = self._head  # an incomplete head; searched in place, copied once complete
        while data:
            if buf:
                start = max(len(buf) - 3, 0)
                buf += data
                end, rest = _head_end(buf, start)
                if 0 <= end <= MAX_HEAD:
                    data = bytes(buf)
                    buf.clear()
            else:
                end, rest = _head_end(data, 0)
            if end < 0 or end > MAX_HEAD:
                if end > MAX_HEAD or len(buf) + len(data) > MAX_HEAD:
                    self._fail(f"the response head is larger than {MAX_HEAD} bytes")
                if not buf:
                    buf += data
                return
            if not self._parse_head(data[:end].decode("latin-1")):
                data = data[rest:]  # an interim 1xx response: the real one follows
                continue
            if rest < len(data):
                self.feed(data[rest:])
            return

    def _parse_head(self, text: str) -> bool:
        lines = text.split("\n")
        version, _, status = lines[0].rstrip("\r").partition(" ")
        code, _, reason = status.partition(" ")
        if not (
            (version in ("HTTP/1.1", "HTTP/1.0") or _other_version(version))
            and len(code) == 3
            and code.isdigit()
            and code.isascii()
        ):
            self._fail(f"bad status line {self._quote(lines[0])}")
        status_code = int(code)
        headers: dict[str, str] = {}
        name = ""
        for line in lines[1:]:
            raw, sep, value = line.partition(":")
            if raw[:1] in _SP_TAB:
                if name and raw[:1]:  # obs-fold: join with a space (section 5.2)
                    headers[name] = f"{headers[name]} {line.strip(_WS)}"
                    continue
                self._fail(f"bad header line {self._quote(line)}")
            name = raw.rstrip(" \t").lower()
            if not sep:
                self._fail(f"bad header line {self._quote(line)}")
            value = value.strip(_WS)
            if name in headers:
                value = f"{headers[name]}, {value}"
            headers[name] = value
        if status_code < 200:
            if status_code == 101:
                self._fail("unexpected 101 Switching Protocols")
            return False
        self.status = status_code
        self.reason = reason.strip(_WS)
        self.http_version = version
        self.headers = headers
        self.head_done = True
        self._framing(headers, version == "HTTP/1.0")
        return True

    def _framing(self, headers: dict[str, str], http10: bool) -> None:
        """Choose how the body ends and whether the connection is reusable (section 6.3)."""
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = not http10
        else:
            tokens = [t.strip() for t in connection.lower().split(",")]
            self.keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
        status = self.status
        if self.no_body or status == 204 or status == 304:  # noqa: PLR1714
            self._finish()
            return
        codings: list[str] = []
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            codings = [c.strip() for c in te.lower().split(",")]
            if cl is not None or http10:
                self.keep_alive = False  # possible smuggling or an HTTP/1.0 misuse (6.1, 6.3)
            if codings[-1] == "chunked":
                codings.pop()
                self._state = _CHUNKED
                self._remaining = -1
            else:
                self._state = _UNTIL_EOF
                self.keep_alive = False
        elif cl is not None:
            if not (cl.isdigit() and cl.isascii() and len(cl) < 19):
                values = {v.strip() for v in cl.split(",")}  # "5, 5" is allowed (6.3)
                cl = values.pop()
                if values or not (cl.isdigit() and cl.isascii() and len(cl) < 19):
                    self._fail(f"bad Content-Length {self._quote(headers['content-length'])}")
            self.content_length = self._remaining = int(cl)
            self._state = _LENGTH
        else:
            self._state = _UNTIL_EOF
            self.keep_alive = False
        ce = headers.get("content-encoding")
        if ce is not None or codings:
            if ce is not None:
                codings += [c.strip() for c in ce.lower().split(",")]
            codings = [c for c in codings if c and c != "identity"]
            if len(codings) > 1 or (codings and codings[0] not in _CODINGS):
                self.keep_alive = False
                raise DecodeError(
                    f"{self.where} sent a body encoded as {', '.join(codings)!r}, "
                    "which lmlink cannot decode (only gzip and deflate)"
                )
            if codings:
                self.decoder = _Decoder(codings[0])
        if self._state == _LENGTH and self._remaining == 0:
            self._finish()

    # -- body ---------------------------------------------------------------------------

    def _emit(self, piece: bytes) -> None:
        decoder = self.decoder
        if decoder is not None:
            piece = decoder.decode(piece, self.limit, self.where)
            if not piece:
                return
        self.body.append(piece)
        self.pending += len(piece)

    def _finish(self) -> None:
        self._state = _DONE
        self.done = True
        decoder = self.decoder
        if decoder is not None:
            tail = decoder.flush(self.where)
            if tail:
                self.body.append(tail)
                self.pending += len(tail)

    def _feed_length(self, data: bytes) -> None:
        remaining = self._remaining
        n = len(data)
        if n < remaining:
            self._remaining = remaining - n
            self._emit(data)
            return
        self._remaining = 0
        if n == remaining:
            self._emit(data)
        else:
            self._emit(data[:remaining])
            self.keep_alive = False  # more bytes than Content-Length: the stream is confused
        self._finish()

    def _feed_chunked(self, data: bytes) -> None:
        # ``_remaining``: > 0 chunk-data bytes still due; 0 the CRLF after chunk data is
        # due; -1 a chunk-size line is due (section 7.1). This is the streaming hot path,
        # hence the inlined emit and the cache of chunk-size lines (token streams repeat a
        # few sizes over and over).
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        remaining = self._remaining
        body = self.body
        plain = self.decoder is None
        sizes = _SIZES
        while pos < end:
            if remaining > 0:
                stop = pos + remaining
                if stop >= end:
                    remaining = stop - end
                    piece = data[pos:] if pos else data
                    if plain:
                        body.append(piece)
                        self.pending += end - pos
                    else:
                        self._emit(piece)
                    break
                piece = data[pos:stop]
                if plain:
                    body.append(piece)
                    self.pending += remaining
                else:
                    self._emit(piece)
                pos = stop
                if stop + 1 < end and data[stop] == 13 and data[stop + 1] == 10:
                    pos += 2
                    remaining = -1
                    continue
                remaining = 0
            if remaining == 0:
                c = data[pos]
                if c == 13:
                    if pos + 1 == end:
                        self._buf = b"\r"
                        break
                    if data[pos + 1] != 10:
                        self._fail("chunk data is not followed by CRLF")
                    pos += 2
                elif c == 10:
                    pos += 1
                else:
                    self._fail("chunk data is longer than its chunk size")
                remaining = -1
                continue
            nl = data.find(b"\n", pos)
            if nl < 0 or nl - pos > MAX_CHUNK_LINE:
                if end - pos > MAX_CHUNK_LINE:
                    self._fail(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                self._buf = data[pos:]
                break
            line = data[pos:nl]
            size = sizes.get(line)
            if size is None:
                size = self._chunk_size(line)
            pos = nl + 1
            if size == 0:
                self._state = _TRAILERS
                self._remaining = 0
                if pos < end:
                    self._feed_trailers(data[pos:])
                return
            remaining = size
        self._remaining = remaining

    def _chunk_size(self, line: bytes) -> int:
        stop = line.find(b";")  # chunk extensions are ignored (section 7.1.1)
        text = (line if stop < 0 else line[:stop]).rstrip(b" \t\r")
        if not text or len(text) > 15 or text.translate(None, _HEX):
            self._fail(f"bad chunk-size line {self._quote(line)}")
        size = int(text, 16)
        if len(line) <= 8 and len(_SIZES) < 4096:
            _SIZES[line] = size
        return size

    def _feed_trailers(self, data: bytes) -> None:
        # Trailer fields (section 7.1.2) are read and dropped: nothing here needs them.
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._buf = data[pos:]
                if self._trailer_size + len(self._buf) > MAX_TRAILERS:
                    self._fail(f"trailer section larger than {MAX_TRAILERS} bytes")
                return
            if nl == pos or (nl == pos + 1 and data[pos] == 13):
                self._finish()
                if nl + 1 < len(data):
                    self.keep_alive = False
                return
            self._trailer_size += nl + 1 - pos
            if self._trailer_size > MAX_TRAILERS:
                self._fail(f"trailer section larger than {MAX_TRAILERS} bytes")
            pos = nl + 1

    def _quote(self, text: str | bytes) -> str:
        """Server bytes for a message: the key blanked, then cut to 100 characters."""
        redact = self.redact
        if redact is not None:
            if isinstance(text, bytes):
                text = redact(text.decode("latin-1")).encode("latin-1", "replace")
            else:
                text = redact(text)
        return repr(text[:100])

    def _fail(self, what: str, reason: str = "") -> NoReturn:
        self.keep_alive = False
        self._state = _DONE
        if reason == "closed":
            raise APIConnectionError(what, request_sent=True, reason=reason)
        raise APIConnectionError(
            f"malformed HTTP response from {self.where}: {what}", request_sent=True, reason=reason
        )

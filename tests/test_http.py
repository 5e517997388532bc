"""Tests for the sans-I/O HTTP/1.1 layer (lmlink._http): URL targets, request bytes and the
incremental response parser, fed at every byte split and at random splits (hypothesis)."""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlink._errors import (
    APIConnectionError,
    ConfigurationError,
    DecodeError,
    ResponseTooLargeError,
)
from lmlink._http.request import build_request, parse_url
from lmlink._http.response import MAX_HEAD, ResponseParser

WHERE = "127.0.0.1:8080"
JSON = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'

CONTENT_LENGTH = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(JSON)).encode() + b"\r\n"
    b"\r\n" + JSON
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"\r\n"
    b'5;name=value;quoted="a;b"\r\nhello\r\n'
    b"1 \r\n,\r\n"
    b"A\r\n data: 1\n\n\r\n"
    b"0;last\r\n"
    b"Trailer-One: x\r\n"
    b"Trailer-Two: y\r\n"
    b"\r\n"
)
CHUNKED_BODY = b"hello, data: 1\n\n"
CLOSE_DELIMITED = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\r\n\r\nof it"
INTERIM = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"
)
BARE_LF = b"HTTP/1.1 200 OK\nContent-Length: 2\nServer: old\n\nok"

# (raw response, expected body, EOF needed to finish it, expected status)
CASES = {
    "content-length": (CONTENT_LENGTH, JSON, False, 200),
    "chunked": (CHUNKED, CHUNKED_BODY, False, 200),
    "close-delimited": (CLOSE_DELIMITED, b"until the end\r\n\r\nof it", True, 200),
    "interim": (INTERIM, b"abc", False, 201),
    "bare-lf": (BARE_LF, b"ok", False, 200),
}


def run(pieces: Iterable[bytes], eof: bool = False, **kwargs: bool) -> tuple[ResponseParser, bytes]:
    """Feed ``pieces`` to a fresh parser (then EOF if asked); return it and its body."""
    parser = ResponseParser(WHERE, **kwargs)
    out: list[bytes] = []
    for piece in pieces:
        parser.feed(piece)
        chunk = parser.take()
        assert chunk or not parser.body
        out.append(chunk)
    if eof:
        parser.feed_eof()
        out.append(parser.take())
    return parser, b"".join(out)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# -- URLs and requests --------------------------------------------------------------------


def test_parse_url_parts() -> None:
    """An absolute URL yields its origin key, connect address, Host header and target."""
    t = parse_url("http://127.0.0.1:8080/v1/chat/completions?a=1")
    assert t.key == ("http", "127.0.0.1", 8080)
    assert (t.host, t.port, t.https, t.where) == ("127.0.0.1", 8080, False, WHERE)
    assert t.tail == " /v1/chat/completions?a=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"


def test_parse_url_defaults_and_ipv6() -> None:
    """Default ports are left out of Host, IPv6 hosts keep brackets in Host only."""
    assert parse_url("https://example.com").tail == " / HTTP/1.1\r\nHost: example.com\r\n"
    assert parse_url("https://example.com").port == 443
    t = parse_url("http://[::1]:11434/api")
    assert (t.host, t.port, t.where) == ("::1", 11434, "[::1]:11434")
    assert t.tail.endswith("Host: [::1]:11434\r\n")


@pytest.mark.parametrize(
    "url", ["ftp://x/", "http:///path", "localhost:8080", "http://h:99999/", "http://h/a b"]
)
def test_parse_url_rejects(url: str) -> None:
    """URLs the transport cannot use raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        parse_url(url)


def test_build_request_bytes() -> None:
    """The request is the request line, Host, Content-Length, the headers verbatim, body."""
    t = parse_url("http://127.0.0.1:8080/v1/x")
    data = build_request("POST", t, [("Content-Type", "application/json")], b"{}")
    assert data == (
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 2\r\n"
        b"Content-Type: application/json\r\n\r\n{}"
    )
    assert (
        build_request("GET", t, [], None) == b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    )


def test_build_request_host_override() -> None:
    """A caller's Host replaces ours and a caller's Content-Length is dropped."""
    t = parse_url("http://127.0.0.1:8080/")
    data = build_request("POST", t, [("host", "localhost"), ("Content-Length", "9")], b"ab")
    assert data == b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nab"


@pytest.mark.parametrize("header", [("X", "a\r\nEvil: 1"), ("X\n", "a"), ("X", "snow\u2603")])
def test_build_request_rejects_bad_headers(header: tuple[str, str]) -> None:
    """CR/LF (header injection) and non-latin-1 text in headers raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        build_request("GET", parse_url("http://h/"), [header], None)


# -- the parser, whole and split ------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_parser_whole(name: str) -> None:
    """Each response parses in one piece: status, headers, body, completion."""
    raw, body, eof, status = CASES[name]
    parser, got = run([raw], eof)
    assert (parser.status, got, parser.done) == (status, body, True)


@pytest.mark.parametrize("name", list(CASES))
def test_parser_every_two_way_split(name: str) -> None:
    """Cutting a response at any single byte boundary gives the same result."""
    raw, body, eof, status = CASES[name]
    for i in range(len(raw) + 1):
        parser, got = run([raw[:i], raw[i:]], eof)
        assert (parser.status, got, parser.done) == (status, body, True), i


@pytest.mark.parametrize("name", list(CASES))
def test_parser_byte_by_byte(name: str) -> None:
    """Feeding one byte at a time gives the same result."""
    raw, body, eof, status = CASES[name]
    parser, got = run([raw[i : i + 1] for i in range(len(raw))], eof)
    assert (parser.status, got, parser.done) == (status, body, True)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(CASES)),
    st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_parser_random_splits(name: str, cuts: list[int]) -> None:
    """Any split into many pieces gives the same result (property test)."""
    raw, body, eof, status = CASES[name]
    parser, got = run(split_at(raw, [c for c in cuts if c <= len(raw)]), eof)
    assert (parser.status, got, parser.done) == (status, body, True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), min_size=0, max_size=20),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_parser_chunked_roundtrip(chunks: list[bytes], cuts: list[int]) -> None:
    """Arbitrary chunk contents come out de-chunked, whatever the read boundaries."""
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    parser, got = run(split_at(wire, [c for c in cuts if c <= len(wire)]))
    assert got == b"".join(chunks)
    assert parser.done
    assert parser.keep_alive


def test_headers_lowercased_and_joined() -> None:
    """Header names are lower-cased, repeats joined with ", ", obs-fold joined by a space."""
    raw = (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a:2 \r\nFolded: one\r\n  two\r\nContent-Length: 0\r\n\r\n"
    )
    parser, _ = run([raw])
    assert parser.headers == {"x-a": "1, 2", "folded": "one two", "content-length": "0"}
    assert (parser.reason, parser.http_version) == ("OK", "HTTP/1.1")


def test_status_line_without_reason() -> None:
    """A status line with no reason phrase is fine."""
    parser, _ = run([b"HTTP/1.1 204\r\n\r\n"])
    assert (parser.status, parser.reason, parser.done) == (204, "", True)


# -- bodies, framing and keep-alive ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "no_body"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
    ],
)
def test_no_body_responses(raw: bytes, no_body: bool) -> None:
    """204, 304 and responses to HEAD end with the head whatever their framing headers say."""
    parser, got = run([raw], no_body=no_body)
    assert (parser.done, got, parser.keep_alive) == (True, b"", True)


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n", False),
    ],
)
def test_keep_alive_decision(head: bytes, keep: bool) -> None:
    """Reuse follows the version and Connection header; TE with CL is never reused."""
    parser, _ = run([head + b"\r\n" + (b"0\r\n\r\n" if b"chunked" in head else b"")])
    assert parser.done
    assert parser.keep_alive is keep


def test_extra_bytes_after_body_prevent_reuse() -> None:
    """Bytes past the end of a response mark the connection as not reusable."""
    parser, got = run([CONTENT_LENGTH + b"junk"])
    assert got == JSON
    assert parser.done
    assert not parser.keep_alive


def test_close_delimited_needs_eof() -> None:
    """A body without length ends only at EOF and is never reused."""
    parser, got = run([b"HTTP/1.1 200 OK\r\n\r\nabc"])
    assert got == b"abc"
    assert not parser.done
    parser.feed_eof()
    assert parser.done
    assert not parser.keep_alive


def test_transfer_encoding_not_chunked_reads_to_eof() -> None:
    """A Transfer-Encoding whose last coding is not chunked is read until close."""
    parser, got = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nxyz"], True)
    assert got == b"xyz"
    assert parser.done
    assert not parser.keep_alive


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "after 3 of 10 body bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "chunked body"),
        (b"HTTP/1.1 200 OK\r\nContent", "middle of the response head"),
        (b"", "without a response"),
    ],
)
def test_eof_too_early(raw: bytes, words: str) -> None:
    """EOF inside a framed body or the head raises APIConnectionError(reason="closed")."""
    parser = ResponseParser(WHERE)
    if raw:
        parser.feed(raw)
    with pytest.raises(APIConnectionError, match=words) as info:
        parser.feed_eof()
    assert info.value.reason == "closed"
    assert info.value.request_sent is True


def test_repeated_equal_content_length() -> None:
    """Content-Length repeated with one value is accepted (RFC 9112 section 6.3)."""
    parser, got = run([b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok"])
    assert got == b"ok"
    assert parser.done


# -- content codings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as some servers send
    ],
)
def test_content_encoding_decoded(coding: str, encode: object) -> None:
    """gzip and deflate bodies (zlib or raw) come out decoded, at any split."""
    plain = JSON * 50
    packed = encode(plain)  # type: ignore[operator]
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        coding.encode(),
        len(packed),
        packed,
    )
    for i in range(0, len(raw), 7):
        parser, got = run([raw[:i], raw[i:]])
        assert (got, parser.done) == (plain, True), i


def test_gzip_chunked() -> None:
    """A gzip body sent chunked is de-chunked, then decoded."""
    packed = gzip.compress(b"hello world" * 20)
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
    wire += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (packed[:10], packed[10:]))
    parser, got = run([wire + b"0\r\n\r\n"])
    assert got == b"hello world" * 20
    assert parser.done


def test_gzip_limit_bounds_inflation() -> None:
    """With a limit set, a body that inflates past it raises ResponseTooLargeError early."""
    packed = gzip.compress(b"\0" * 1_000_000)
    parser = ResponseParser(WHERE)
    parser.limit = 1000
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    with pytest.raises(ResponseTooLargeError):
        parser.feed(head % len(packed) + packed)
    assert parser.pending <= 1001


def test_unsupported_coding() -> None:
    """A coding other than gzip/deflate raises DecodeError naming it."""
    with pytest.raises(DecodeError, match="br"):
        run([b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx"])


def test_corrupt_gzip() -> None:
    """A corrupt or truncated gzip body raises DecodeError."""
    with pytest.raises(DecodeError):
        run([b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope"])
    packed = gzip.compress(b"x" * 1000)[:-10]
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    with pytest.raises(DecodeError, match="end marker"):
        run([raw % len(packed) + packed])


# -- malformed responses and caps -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ],
)
def test_malformed_head(raw: bytes, words: str) -> None:
    """A broken status line, header line or Content-Length raises a clear error."""
    with pytest.raises(APIConnectionError, match=words) as info:
        run([raw])
    assert "malformed HTTP response from 127.0.0.1:8080" in info.value.message


@pytest.mark.parametrize(
    ("chunks", "words"),
    [
        (b"zz\r\n", "bad chunk-size line"),
        (b"0x5\r\nhello\r\n", "bad chunk-size line"),
        (b"-5\r\n", "bad chunk-size line"),
        (b"+5\r\n", "bad chunk-size line"),
        (b" 5\r\n", "bad chunk-size line"),
        (b"\r\n", "bad chunk-size line"),
        (b"1000000000000000\r\n", "bad chunk-size line"),
        (b"3\r\nhello\r\n", "longer than its chunk size"),
        (b"3\r\nhel\rX", "not followed by CRLF"),
        (b"1;" + b"x" * 5000 + b"\r\n", "longer than 4096"),
        (b"1" + b"0" * 5000, "longer than 4096"),
    ],
)
def test_malformed_chunks(chunks: bytes, words: str) -> None:
    """Bad chunk sizes, chunk data overruns and over-long chunk lines are refused."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for pieces in ([head + chunks], [head, *(chunks[i : i + 1] for i in range(len(chunks)))]):
        with pytest.raises(APIConnectionError, match=words):
            run(pieces)


def test_head_size_cap() -> None:
    """A head over 64 KiB raises, whether it arrives at once or in pieces."""
    big = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    with pytest.raises(APIConnectionError, match="larger than 65536"):
        run([big])
    with pytest.raises(APIConnectionError, match="larger than 65536"):
        run([big[i : i + 1000] for i in range(0, len(big), 1000)])
    with pytest.raises(APIConnectionError, match="larger than 65536"):
        run([b"HTTP/1.1 200 OK\r\n" + b"a" * (MAX_HEAD + 10)])


def test_trailer_size_cap() -> None:
    """A trailer section over 64 KiB raises."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    trailers = b"".join(b"T%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    with pytest.raises(APIConnectionError, match="trailer section"):
        run([raw, trailers])


def test_take_drains() -> None:
    """``take`` returns what arrived since the last call, then ``b""``."""
    parser = ResponseParser(WHERE)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n")
    assert parser.pending == 5
    assert parser.take() == b"abcde"
    assert parser.take() == b""
    assert parser.pending == 0
    assert not parser.done

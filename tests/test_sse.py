"""Tests for the server-sent-events decoder (lmlink._sse).

``NaiveDecoder`` below is a deliberately plain reading of the WHATWG algorithm (regex line
splitting, the data buffer kept as one growing string, no fast paths). It is the oracle for
the property tests and the baseline for the benchmark: run this file as a script
(``.venv/bin/python tests/test_sse.py``) to print µs per event for both.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import timeit
import tracemalloc
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlink._errors import ConfigurationError, ResponseTooLargeError
from lmlink._sse import SSEDecoder, SSEEvent

BOM = b"\xef\xbb\xbf"
MiB = 1 << 20


class NaiveDecoder:
    """Reference decoder: the spec's steps written out plainly, with the same size caps."""

    _line_end = re.compile(rb"\r\n|\r|\n")

    def __init__(self, max_line: int = MiB) -> None:
        self.max_line = max_line
        self.buf = b""
        self.started = False
        self.skip_lf = False
        self.data = b""
        self.event = ""
        self.last_id: str | None = None
        self.retry: int | None = None
        # Every event dispatched so far, kept even when a later line raises.
        self.emitted: list[SSEEvent] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        before = len(self.emitted)
        self.buf += chunk
        if not self.started:
            if len(self.buf) < 3 and BOM.startswith(self.buf):
                return []
            self.started = True
            if self.buf.startswith(BOM):
                self.buf = self.buf[3:]
        if self.skip_lf and self.buf:
            self.skip_lf = False
            if self.buf.startswith(b"\n"):
                self.buf = self.buf[1:]
        while (match := self._line_end.search(self.buf)) is not None:
            line = self.buf[: match.start()]
            self.buf = self.buf[match.end() :]
            if match.group() == b"\r" and not self.buf:
                self.skip_lf = True
            if len(line) > self.max_line:
                raise ResponseTooLargeError("line")
            self._line(line)
        if len(self.buf) > self.max_line:
            raise ResponseTooLargeError("line")
        return self.emitted[before:]

    def _line(self, line: bytes) -> None:
        if not line:
            if self.data:
                data = self.data[:-1] if self.data.endswith(b"\n") else self.data
                self.emitted.append(
                    SSEEvent(self.event or "message", data, self.last_id, self.retry)
                )
            self.data = b""
            self.event = ""
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name in (b"data", b"error"):
            self.data += value + b"\n"
            if len(self.data) > 16 * self.max_line:
                raise ResponseTooLargeError("data")
            if name == b"error":
                self.event = "error"
        elif name == b"event":
            self.event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and re.fullmatch(rb"[0-9]+", value):
            with contextlib.suppress(ValueError):
                self.retry = int(value)

    def close(self) -> list[SSEEvent]:
        return []


Decoder = SSEDecoder | NaiveDecoder
DECODERS = [pytest.param(SSEDecoder, id="fast"), pytest.param(NaiveDecoder, id="naive")]


def decode(chunks: Iterable[bytes], decoder: Decoder | None = None) -> list[SSEEvent]:
    """All events from feeding ``chunks`` then closing."""
    dec = decoder if decoder is not None else SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += dec.feed(chunk)
    events += dec.close()
    return events


def split_at(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``stream`` cut at the (sorted) positions ``cuts``; pieces may be empty."""
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(dec: Decoder, chunks: Iterable[bytes]) -> None:
    """Feed every chunk, ignoring the events."""
    for chunk in chunks:
        dec.feed(chunk)


def feed_until_error(dec: Decoder, chunks: Iterable[bytes]) -> tuple[int, int, str]:
    """Feed until ResponseTooLargeError (which must come): bytes taken before the chunk that
    raised, bytes including it, and the error message."""
    fed = 0
    for chunk in chunks:
        try:
            dec.feed(chunk)
        except ResponseTooLargeError as exc:
            return fed, fed + len(chunk), str(exc)
        fed += len(chunk)
    pytest.fail(f"no ResponseTooLargeError after {fed} bytes")


def ev(
    data: bytes, event: str = "message", id: str | None = None, retry: int | None = None
) -> SSEEvent:
    return SSEEvent(event, data, id, retry)


# --- every rule, on both decoders (which also checks the oracle) ---------------------------

CASES = [
    pytest.param(b"data: x\n\n", [ev(b"x")], id="lf"),
    pytest.param(b"data: x\r\n\r\n", [ev(b"x")], id="crlf"),
    pytest.param(b"data: x\r\r", [ev(b"x")], id="cr"),
    pytest.param(b"data: a\rdata: b\r\ndata: c\n\r\n", [ev(b"a\nb\nc")], id="mixed-endings"),
    pytest.param(b"data: x\r\r\n", [ev(b"x")], id="cr-then-crlf-is-two-endings"),
    pytest.param(b"data: x\n\r", [ev(b"x")], id="lf-then-cr-is-two-endings"),
    pytest.param(b":\ndata: x\n\n", [ev(b"x")], id="comment-bare-colon"),
    pytest.param(b": keepalive 512/2048\n\ndata: x\n\n", [ev(b"x")], id="comment-keepalive"),
    pytest.param(
        b": ping - 2026-01-01 00:00:00.000000+00:00\r\n\r\n", [], id="comment-ping-no-event"
    ),
    pytest.param(b"data:x\n\n", [ev(b"x")], id="data-no-space"),
    pytest.param(b"data: x\n\n", [ev(b"x")], id="data-one-space"),
    pytest.param(b"data:  x\n\n", [ev(b" x")], id="only-one-space-removed"),
    pytest.param(b"data:\tx\n\n", [ev(b"\tx")], id="tab-is-not-removed"),
    pytest.param(b"data: a:b: c\n\n", [ev(b"a:b: c")], id="colons-in-value"),
    pytest.param(b"data\n\n", [ev(b"")], id="no-colon-empty-value"),
    pytest.param(b"data:\n\n", [ev(b"")], id="empty-data-dispatches"),
    pytest.param(b"data\ndata\n\n", [ev(b"\n")], id="only-last-newline-stripped"),
    pytest.param(b"data: a\ndata: b\n\n", [ev(b"a\nb")], id="multi-line-data"),
    pytest.param(b"data: \xff\xfe{}\n\n", [ev(b"\xff\xfe{}")], id="data-bytes-kept-raw"),
    pytest.param(b"event: delta\ndata: x\n\n", [ev(b"x", "delta")], id="event-type"),
    pytest.param(b"event:\ndata: x\n\n", [ev(b"x")], id="empty-event-is-message"),
    pytest.param(b"event: a\ndata: 1\n\ndata: 2\n\n", [ev(b"1", "a"), ev(b"2")], id="event-resets"),
    pytest.param(b"event: a\n\ndata: 2\n\n", [ev(b"2")], id="event-reset-without-data"),
    pytest.param(b"event: \xff\ndata: x\n\n", [ev(b"x", "\ufffd")], id="event-invalid-utf8"),
    pytest.param(b"Data: x\n\n", [], id="field-names-case-sensitive"),
    pytest.param(b"vendor: x\nfoo\ndata: y\n\n", [ev(b"y")], id="unknown-fields-ignored"),
    pytest.param(b"id: 7\ndata: x\n\n", [ev(b"x", id="7")], id="id"),
    pytest.param(
        b"id: 7\ndata: 1\n\ndata: 2\n\n", [ev(b"1", id="7"), ev(b"2", id="7")], id="id-persists"
    ),
    pytest.param(
        b"id: 7\ndata: 1\n\nid\ndata: 2\n\n", [ev(b"1", id="7"), ev(b"2", id="")], id="id-emptied"
    ),
    pytest.param(b"id: 7\nid: 8\x00\ndata: x\n\n", [ev(b"x", id="7")], id="id-with-nul-ignored"),
    pytest.param(b"id: 7\n\ndata: x\n\n", [ev(b"x", id="7")], id="id-set-in-dataless-block"),
    pytest.param(b"retry: 3000\ndata: x\n\n", [ev(b"x", retry=3000)], id="retry"),
    pytest.param(
        b"retry: 10\n\ndata: x\n\ndata: y\n\n",
        [ev(b"x", retry=10), ev(b"y", retry=10)],
        id="retry-persists",
    ),
    pytest.param(b"retry: 10\nretry: 1s\ndata: x\n\n", [ev(b"x", retry=10)], id="retry-nondigit"),
    pytest.param(b"retry: -5\nretry:\ndata: x\n\n", [ev(b"x")], id="retry-sign-or-empty"),
    pytest.param("retry: ١٢\ndata: x\n\n".encode(), [ev(b"x")], id="retry-non-ascii-digits"),
    pytest.param(b"retry: " + b"9" * 5000 + b"\ndata: x\n\n", [ev(b"x")], id="retry-huge"),
    pytest.param(
        b'error: {"code":500,"message":"boom","type":"server_error"}\n\n',
        [ev(b'{"code":500,"message":"boom","type":"server_error"}', "error")],
        id="legacy-error-field",
    ),
    pytest.param(b"event: error\n\n", [], id="event-error-without-data"),
    pytest.param(b"error\n\n", [ev(b"", "error")], id="error-field-empty"),
    pytest.param(b"\n\n\n", [], id="blank-lines-only"),
    pytest.param(b"data: [DONE]\n\n", [ev(b"[DONE]")], id="done-marker"),
    pytest.param(BOM + b"data: x\n\n", [ev(b"x")], id="bom-skipped"),
    pytest.param(BOM + BOM + b"data: x\n\ndata: y\n\n", [ev(b"y")], id="second-bom-kept"),
    pytest.param(b"\xef\xbbdata: x\n\n", [], id="partial-bom-kept"),
    pytest.param(b"data: x\n\n" + BOM + b"data: y\n\n", [ev(b"x")], id="bom-later-kept"),
    pytest.param(b"data: x\n", [], id="unterminated-event-discarded"),
    pytest.param(b"data: x", [], id="unterminated-line-discarded"),
    pytest.param(b"", [], id="empty-stream"),
]


@pytest.mark.parametrize("make", DECODERS)
@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_rules(make: type[Decoder], stream: bytes, expected: list[SSEEvent]) -> None:
    """Each rule of the event-stream format decodes as the spec says."""
    assert decode([stream], make()) == expected


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_rules_byte_by_byte(stream: bytes, expected: list[SSEEvent]) -> None:
    """Each rule holds when the stream arrives one byte per chunk."""
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == expected


# --- chunk boundaries ------------------------------------------------------------------------


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    """A CR ending one chunk and an LF starting the next are one line ending, not a blank line."""
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"data: b\r") == []
    assert dec.feed(b"") == []
    assert dec.feed(b"\ndata: c\r") == []
    assert dec.feed(b"\n\r") == [ev(b"a\nb\nc")]


def test_cr_then_data_in_next_chunk() -> None:
    """A chunk-final CR does not swallow a following chunk that starts with something else."""
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\r") == [ev(b"a")]
    assert dec.feed(b"\ndata: b\n\n") == [ev(b"b")]


def test_event_dispatches_on_the_chunk_that_completes_it() -> None:
    """feed() returns an event as soon as its blank line arrives, and several per chunk."""
    dec = SSEDecoder()
    assert dec.feed(b"data: 1\n") == []
    assert dec.feed(b"\ndata: 2\n\ndata: 3\n\nda") == [ev(b"1"), ev(b"2"), ev(b"3")]
    assert dec.feed(b"ta: 4\n\n") == [ev(b"4")]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"\xef", b"\xbb", b"\xbf", b"data: x\n\n"], id="bom-byte-by-byte"),
        pytest.param([b"\xef\xbb", b"", b"\xbfdata: x\n\n"], id="bom-split-with-empty-chunk"),
        pytest.param([BOM, b"data: x\n\n"], id="bom-alone"),
    ],
)
def test_bom_split_across_chunks(chunks: list[bytes]) -> None:
    """The BOM is skipped even when its three bytes arrive in different chunks."""
    assert decode(chunks) == [ev(b"x")]


def test_close_discards_pending_event_and_line() -> None:
    """close() returns [] and drops the unfinished event, as the spec says for EOF."""
    dec = SSEDecoder()
    assert dec.feed(b"event: delta\ndata: 1\ndata: 2") == []
    assert dec.close() == []
    assert dec.feed(b"data: 3\n\n") == [ev(b"3")]


REFERENCE_STREAM = (
    BOM
    + b": keepalive 512/2048\n"
    + b"retry: 3000\r\n"
    + b'data: {"a":1}\n'
    + b"\n"
    + b"id: 7\r"
    + b"event: delta\r\n"
    + b"data:first\r"
    + b"data: second\n"
    + b"vendor-field: ignored\r\n"
    + b"\r\n"
    + b":\n"
    + b"data\n"
    + b"\r"
    + b'error: {"code":500,"message":"boom","type":"server_error"}\n'
    + b"\n"
    + b": ping - 2026-01-01 00:00:00.000000+00:00\r\n"
    + b"retry: soon\n"
    + b"id: 8\n"
    + b"data:  two spaces\r\n"
    + b"\n"
    + b"event: error\n\n"
    + b"data: [DONE]\r\n\r\n"
    + b"data: never finished\n"
)
REFERENCE_EVENTS = [
    ev(b'{"a":1}', retry=3000),
    ev(b"first\nsecond", "delta", "7", 3000),
    ev(b"", id="7", retry=3000),
    ev(b'{"code":500,"message":"boom","type":"server_error"}', "error", "7", 3000),
    ev(b" two spaces", id="8", retry=3000),
    ev(b"[DONE]", id="8", retry=3000),
]


@pytest.mark.parametrize("make", DECODERS)
def test_reference_stream_whole(make: type[Decoder]) -> None:
    """The reference stream, fed in one chunk, gives the hand-written events."""
    assert decode([REFERENCE_STREAM], make()) == REFERENCE_EVENTS


def test_reference_stream_every_two_piece_split() -> None:
    """Cutting the reference stream into two pieces at any byte never changes the events."""
    for cut in range(len(REFERENCE_STREAM) + 1):
        assert decode(split_at(REFERENCE_STREAM, [cut])) == REFERENCE_EVENTS, cut


def test_reference_stream_every_three_piece_split() -> None:
    """Cutting the reference stream at any two bytes (empty middle included) changes nothing."""
    n = len(REFERENCE_STREAM)
    for first in range(n + 1):
        for second in range(first, n + 1):
            chunks = split_at(REFERENCE_STREAM, [first, second])
            assert decode(chunks) == REFERENCE_EVENTS, (first, second)


def test_reference_stream_byte_by_byte() -> None:
    """The reference stream fed one byte at a time gives the same events as fed whole."""
    chunks = [REFERENCE_STREAM[i : i + 1] for i in range(len(REFERENCE_STREAM))]
    assert decode(chunks) == REFERENCE_EVENTS


# --- size caps -------------------------------------------------------------------------------


def test_line_cap_message() -> None:
    """An endless line raises ResponseTooLargeError naming the 1 MiB limit."""
    dec = SSEDecoder()
    with pytest.raises(ResponseTooLargeError, match=r"^SSE line over 1 MiB; "):
        feed_all(dec, itertools.repeat(b"x" * 4096, MiB // 4096 + 2))


@pytest.mark.parametrize(
    ("line_len", "raises"),
    [
        pytest.param(64, False, id="at-cap"),
        pytest.param(65, True, id="one-over"),
    ],
)
@pytest.mark.parametrize("whole", [True, False], ids=["one-chunk", "byte-chunks"])
def test_line_cap_boundary(line_len: int, raises: bool, whole: bool) -> None:
    """A line of exactly max_line bytes passes, one byte more raises, however it arrives."""
    stream = b"data:" + b"x" * (line_len - 5) + b"\n\n"
    chunks = [stream] if whole else [stream[i : i + 1] for i in range(len(stream))]
    if raises:
        with pytest.raises(ResponseTooLargeError):
            decode(chunks, SSEDecoder(max_line=64))
    else:
        assert decode(chunks, SSEDecoder(max_line=64)) == [ev(b"x" * (line_len - 5))]


def test_line_cap_raises_before_buffering_more() -> None:
    """The cap fires on the first feed that takes the unfinished line past max_line."""
    before, after, _ = feed_until_error(SSEDecoder(max_line=1000), itertools.repeat(b"y" * 7, 1000))
    assert before <= 1000 < after


def test_endless_line_memory_stays_bounded() -> None:
    """Feeding 4 MiB of one unterminated line keeps at most about max_line (1 MiB) in memory."""
    dec = SSEDecoder()
    chunk = b"z" * 4096
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLargeError):
            feed_all(dec, itertools.repeat(chunk, 4 * MiB // len(chunk)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB


@pytest.mark.parametrize(
    "line",
    [pytest.param(b"data: abcdefg", id="data"), pytest.param(b"error: abcdefg", id="error")],
)
def test_event_data_cap(line: bytes) -> None:
    """Data lines without a blank line raise once the event passes 16 x max_line bytes."""
    before, _, message = feed_until_error(
        SSEDecoder(max_line=64), itertools.repeat(line + b"\n", 1000)
    )
    assert message.startswith("SSE event data over 1 KiB; ")
    # Each line adds 8 bytes ("abcdefg\n"): 128 of them fill the 1024-byte cap exactly.
    assert before == 128 * len(line + b"\n")


def test_data_cap_resets_per_event() -> None:
    """The event cap counts one event: many small events in a row never trip it."""
    dec = SSEDecoder(max_line=64)
    events = decode([b"data: 0123456789\n\n" * 1000], dec)
    assert len(events) == 1000


def test_decoder_is_spent_after_cap() -> None:
    """After a cap error every later feed raises again, and close() still returns []."""
    dec = SSEDecoder(max_line=8)
    with pytest.raises(ResponseTooLargeError):
        dec.feed(b"data: 0123456789")
    with pytest.raises(ResponseTooLargeError, match="SSE line over 8 bytes"):
        dec.feed(b"\n\ndata: x\n\n")
    assert dec.close() == []


@pytest.mark.parametrize("bad", [0, -1], ids=["zero", "negative"])
def test_max_line_must_be_positive(bad: int) -> None:
    """A max_line below 1 is a ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        SSEDecoder(max_line=bad)


def test_event_is_a_plain_tuple() -> None:
    """SSEEvent is a cheap tuple with named fields and the documented defaults."""
    event = SSEEvent(data=b"x")
    assert (event.event, event.data, event.id, event.retry) == ("message", b"x", None, None)
    assert isinstance(event, tuple)
    assert event == ("message", b"x", None, None)


# --- properties --------------------------------------------------------------------------------

ENDINGS = (b"\n", b"\r", b"\r\n")
line_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"))
data_line = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def event_specs(draw: st.DrawFn) -> tuple[str | None, list[bytes], str | None, int | None, bool]:
    """One event to serialise: type, data lines, id, retry, and whether to use `error:`."""
    return (
        draw(st.none() | line_text),
        draw(st.lists(data_line, min_size=1, max_size=4)),
        draw(st.none() | line_text.filter(lambda s: "\0" not in s)),
        draw(st.none() | st.integers(0, 10**12)),
        draw(st.booleans()),
    )


def field(draw: st.DrawFn, name: bytes, value: bytes) -> bytes:
    """``name: value`` with or without the optional space (kept when the value needs it)."""
    if not value and draw(st.booleans()):
        return name
    if value.startswith(b" ") or draw(st.booleans()):
        return name + b": " + value
    return name + b":" + value


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A random, valid event stream and the events it must decode to."""
    lines: list[bytes] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    retry: int | None = None
    for kind, data, id_, new_retry, as_error in draw(st.lists(event_specs(), max_size=6)):
        if draw(st.booleans()):
            lines.append(b": " + draw(data_line))
        if kind is not None:
            lines.append(field(draw, b"event", kind.encode()))
        if id_ is not None:
            lines.append(field(draw, b"id", id_.encode()))
            last_id = id_
        if new_retry is not None:
            lines.append(field(draw, b"retry", str(new_retry).encode()))
            retry = new_retry
        if draw(st.booleans()):
            lines.append(field(draw, b"x-vendor", draw(data_line)))
        name = b"error" if as_error else b"data"
        lines.extend(field(draw, name, value) for value in data)
        lines.extend([b""] * draw(st.integers(1, 3)))
        event = "error" if as_error else (kind or "message")
        expected.append(SSEEvent(event, b"\n".join(data), last_id, retry))
    out = [BOM] if draw(st.booleans()) else []
    previous = b""
    for line in lines:
        # After a lone CR, a blank line ended by LF would merge into one CRLF.
        choices = ENDINGS[1:] if previous == b"\r" and not line else ENDINGS
        previous = draw(st.sampled_from(choices))
        out += [line, previous]
    return b"".join(out), expected


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut at random positions (empty pieces allowed)."""
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return split_at(stream, cuts)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_roundtrip_random_events_and_chunking(data: st.DataObject) -> None:
    """Random events with random line endings and chunking decode back to the same events."""
    stream, expected = data.draw(streams())
    assert decode(data.draw(chunked(stream))) == expected
    assert decode([stream], NaiveDecoder()) == expected


TOKENS = [b"data", b"error", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n"]
TOKENS += [BOM, b"\xef", b"\x00", b"\xff", b"7", b"x", b"\n\n", b"data: {}\n\n"]
noise = st.binary(max_size=200) | st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)


def run(dec: Decoder, chunks: Iterable[bytes]) -> tuple[list[SSEEvent], bool]:
    """Events from feeding ``chunks`` (up to any error) and whether ResponseTooLargeError hit."""
    events: list[SSEEvent] = []
    try:
        for chunk in chunks:
            events += dec.feed(chunk)
    except ResponseTooLargeError:
        return events, True
    return events + dec.close(), False


@settings(max_examples=500, deadline=None)
@given(st.data(), noise, st.sampled_from([1, 4, 16, MiB]))
def test_arbitrary_bytes_match_reference(data: st.DataObject, stream: bytes, cap: int) -> None:
    """Any bytes, chunked anyhow, give the reference's events and raise only ResponseTooLarge."""
    naive = NaiveDecoder(cap)
    try:
        naive.feed(stream)
        naive_failed = False
    except ResponseTooLargeError:
        naive_failed = True
    events, failed = run(SSEDecoder(cap), data.draw(chunked(stream)))
    assert failed == naive_failed
    if failed:
        # Events completed in the chunk that raised are lost with it; the rest must agree.
        assert events == naive.emitted[: len(events)]
    else:
        assert events == naive.emitted


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4096), st.lists(st.integers(1, 64), min_size=1), data_line)
def test_endless_line_cap(cap: int, sizes: list[int], start: bytes) -> None:
    """An endless line in small chunks raises on the first feed taking it past max_line."""
    # The "data:" prefix keeps a random start from forming a BOM, which would not count.
    line = b"data:" + start + b"x" * (cap + 64)
    bounds = itertools.accumulate(itertools.cycle(sizes), initial=0)
    chunks = itertools.islice((line[a:b] for a, b in itertools.pairwise(bounds)), len(line))
    before, after, _ = feed_until_error(SSEDecoder(max_line=cap), chunks)
    # Until the failing chunk the decoder held at most max_line bytes of the line.
    assert before <= cap < after


# --- benchmark (not a test) ----------------------------------------------------------------


def _bench_events(n: int = 20_000) -> list[bytes]:
    body = (
        b'{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"m","choices":[{"index":0,"delta":{"content":"tok%d"},"finish_reason":null}]}'
    )
    stream = b"".join(b"data: " + body % i + b"\n\n" for i in range(n))
    return [stream[i : i + 4096] for i in range(0, len(stream), 4096)]


def _bench() -> None:
    n = 20_000
    chunks = _bench_events(n)
    print(f"{n} events of ~{sum(map(len, chunks)) // n} bytes in 4 KiB chunks")
    makers: list[type[Decoder]] = [SSEDecoder, NaiveDecoder]
    for make in makers:
        assert len(decode(chunks, make())) == n
        best = min(timeit.repeat(lambda: decode(chunks, make()), number=1, repeat=15))  # noqa: B023
        print(f"{make.__name__:>12}: {best / n * 1e6:.3f} µs/event")


if __name__ == "__main__":
    _bench()

"""Response framing: lmlink's hand-written parser against httptools (llhttp), side by side.

    .venv/bin/python benchmarks/framing.py            # about 20 s
    .venv/bin/python benchmarks/framing.py --json     # the numbers as JSON

The same bytes go to both: the head of a chunked ``text/event-stream`` response, then N
chunks of one SSE event each (a typical token delta, about 100 bytes), fed

- ``one-per-read``: one chunk per ``feed`` (a stream that arrives token by token, the
  common case of a live generation), and
- ``64KiB-reads``: in 64 KiB pieces (a stream that was buffered, or a fast server).

Both parsers hand out the de-chunked body bytes; the work counted is parsing and collecting
them (the SSE and JSON decoding that follow are the same either way). Reported: chunks per
second of each, the ratio, and what share of one chunk's end-to-end cost in the client the
parser is (from the one-stream rate of ``benchmarks/run.py``, given with ``--stream-rate``),
which bounds what a faster parser could gain end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from lmlink._http.response import ResponseParser

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)
EVENT = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" word"}}]}\n\n'
)
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


def pieces(n: int, mode: str) -> list[bytes]:
    body = [CHUNK] * n + [b"0\r\n\r\n"]
    if mode == "one-per-read":
        return [HEAD, *body]
    data = HEAD + b"".join(body)
    return [data[i : i + 65536] for i in range(0, len(data), 65536)]


def run_lmlink(feeds: list[bytes]) -> int:
    parser = ResponseParser("127.0.0.1:1", False, 64 << 20, None)
    got = 0
    for data in feeds:
        parser.feed(data)
        if parser.body:
            got += len(parser.take())
    assert parser.done
    return got


def run_httptools(feeds: list[bytes]) -> int:
    import httptools

    class Sink:
        __slots__ = ("body", "done", "headers")

        def __init__(self) -> None:
            self.body: list[bytes] = []
            self.headers: dict[bytes, bytes] = {}
            self.done = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.done = True

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    got = 0
    for data in feeds:
        parser.feed_data(data)
        if sink.body:
            got += len(b"".join(sink.body))
            sink.body.clear()
    assert sink.done
    return got


def measure(fn: Any, feeds: list[bytes], chunks: int, repeat: int) -> float:
    """Chunks per second, the median of ``repeat`` runs."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(feeds)
        rates.append(chunks / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument(
        "--stream-rate",
        type=float,
        default=72_637.0,
        help="lmlink's end-to-end one-stream chunks/s (benchmarks/run.py)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for mode in ("one-per-read", "64KiB-reads"):
        feeds = pieces(args.chunks, mode)
        assert run_lmlink(feeds) == run_httptools(feeds) == len(EVENT) * args.chunks
        ours = measure(run_lmlink, feeds, args.chunks, args.repeat)
        theirs = measure(run_httptools, feeds, args.chunks, args.repeat)
        share = (1 / ours) / (1 / args.stream_rate)
        saved = share * (1 - ours / theirs)
        results[mode] = {
            "lmlink_chunks_per_s": round(ours),
            "httptools_chunks_per_s": round(theirs),
            "httptools_vs_lmlink": round(theirs / ours, 2),
            "parser_share_of_a_streamed_chunk": round(share, 3),
            "most_end_to_end_gain": round(1 / (1 - saved), 3),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| reads | lmlink parser chunks/s | httptools chunks/s | ratio | parser share of a "
        "streamed chunk | end-to-end gain at most |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['lmlink_chunks_per_s']:,} | {r['httptools_chunks_per_s']:,} | "
            f"{r['httptools_vs_lmlink']:.2f} x | {r['parser_share_of_a_streamed_chunk']:.1%} | "
            f"{r['most_end_to_end_gain']:.3f} x |"
        )


if __name__ == "__main__":
    main()

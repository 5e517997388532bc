"""100,000 requests through one ``lmlink.AsyncClient``: memory and open files stay flat.

    .venv/bin/python benchmarks/leak.py [--requests 100000] [--every 10000] [--url URL]

Sends ``--requests`` chat requests, 64 in flight, through one client (every tenth call is a
short 20-token stream, so both paths run), and samples the process's current RSS (not the
high-water mark) and its number of open file descriptors (``/proc/self/fd``) every
``--every`` requests. The first sample is taken after a warm-up of ``--every`` requests.
Flat means: RSS grows by at most ``--max-growth-mb`` over the samples after warm-up, and
the number of open descriptors never changes. Without ``--url`` it starts the fake server
(``server.py``) itself. Prints a table, then one JSON line (read by ``run.py``); exits 1
when not flat.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clients import LmlinkAsync
from _harness import running_server

IN_FLIGHT = 64
STREAM_EVERY = 10
STREAM_TOKENS = 20


def rss_mb() -> float:
    """The current resident set size."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _worker(bench: LmlinkAsync, calls: Iterator[int]) -> None:
    for i in calls:
        if i % STREAM_EVERY == STREAM_EVERY - 1:
            await bench.stream(STREAM_TOKENS)
        else:
            await bench.chat()


async def run(base: str, requests: int, every: int) -> list[dict[str, float]]:
    bench = LmlinkAsync(base)
    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    try:
        # The warm-up batch, then one batch per sample; each batch is ``every`` calls.
        for batch in range(requests // every + 1):
            calls = iter(range(every))  # shared: the workers drain one batch between them
            await asyncio.gather(*(_worker(bench, calls) for _ in range(IN_FLIGHT)))
            gc.collect()
            sample = {
                "requests": batch * every,
                "rss_mb": rss_mb(),
                "fds": open_fds(),
                "seconds": time.perf_counter() - started,
            }
            samples.append(sample)
    finally:
        await bench.aclose()
    return samples


def verdict(samples: list[dict[str, float]], max_growth_mb: float) -> dict[str, Any]:
    rss = [s["rss_mb"] for s in samples]
    fds = {s["fds"] for s in samples}
    growth = max(rss) - rss[0]
    return {
        "samples": samples,
        "rss_growth_mb": growth,
        "fd_counts": sorted(fds),
        "flat": growth <= max_growth_mb and len(fds) == 1,
        "max_growth_mb": max_growth_mb,
        "requests": samples[-1]["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--url", help="a running fake server's /v1 URL")
    parser.add_argument("--max-growth-mb", type=float, default=2.0)
    args = parser.parse_args()
    if args.url:
        samples = asyncio.run(run(args.url, args.requests, args.every))
    else:
        with running_server() as (port, _):
            samples = asyncio.run(run(f"http://127.0.0.1:{port}/v1", args.requests, args.every))
    result = verdict(samples, args.max_growth_mb)
    print("requests  RSS MB  open fds  seconds", file=sys.stderr)
    for s in samples:
        print(
            f"{s['requests']:8.0f}  {s['rss_mb']:6.1f}  {s['fds']:8.0f}  {s['seconds']:7.1f}",
            file=sys.stderr,
        )
    word = "flat" if result["flat"] else "NOT flat"
    print(
        f"{word}: RSS grew {result['rss_growth_mb']:.2f} MB after warm-up, "
        f"open fds {result['fd_counts']}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    sys.exit(0 if result["flat"] else 1)


if __name__ == "__main__":
    main()

"""``lmlink embed`` (``run_embed``): items/s against the number of inputs per request.

    .venv/bin/python benchmarks/embed.py            # 3 rounds of 4,000 items, ~1 min
    .venv/bin/python benchmarks/embed.py --quick    # 1 round of 1,000 items

The server is lmlink's fake server in a process of its own, its embeddings answers costing
what a small embedding server's do in shape: a fixed 4 ms per request (HTTP, tokenizing,
scheduling) plus 0.25 ms per input, with 4 requests served at a time (``concurrency=4``, as
a server with four slots would allow). Each batch size runs into a fresh output, checked to
hold every id once; the median items/s of the rounds is reported, and its ratio to one
input per request. Writes ``benchmarks/results/embed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lmlink.batch

ROOT = Path(__file__).resolve().parent
SIZES = (1, 8, 32, 128)
_SERVER = (
    "import sys; from lmlink.testing import EmbedSettings, FakeServer; "
    "srv = FakeServer(keep_requests=16).start(); "
    "srv.embed = EmbedSettings(dimensions=384, delay=0.004, delay_per_input=0.00025); "
    "print(srv.url, flush=True); sys.stdin.read()"
)


def start_server() -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process; it ends when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"the fake server did not start: {url!r}")
    return proc, url


def run_once(url: str, items: int, batch_size: int, workdir: Path) -> float:
    """Items/s of one run of ``items`` at ``batch_size`` inputs per request."""
    rows = [{"id": f"i{n}", "text": f"document number {n} about a topic"} for n in range(items)]
    out = workdir / f"out-{batch_size}-{time.monotonic_ns()}.jsonl"
    started = time.perf_counter()
    summary = lmlink.batch.run_embed(
        rows, out, endpoint=url, model="embedder", batch_size=batch_size, concurrency=4
    )
    elapsed = time.perf_counter() - started
    ids = [json.loads(line).get("id") for line in out.read_text().splitlines()[1:]]
    assert summary.ok == items, summary.describe()
    assert sorted(ids) == sorted(r["id"] for r in rows), "an id lost or written twice"
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 items")
    args = parser.parse_args()
    items, rounds = (1000, 1) if args.quick else (4000, 3)
    proc, url = start_server()
    rates: dict[int, list[float]] = {size: [] for size in SIZES}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(rounds):
                order = SIZES if n % 2 == 0 else tuple(reversed(SIZES))
                for size in order:
                    rates[size].append(run_once(url, items, size, Path(tmp)))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    base = statistics.median(rates[1])
    result: dict[str, Any] = {"items": items, "rounds": rounds, "sizes": {}}
    for size in SIZES:
        median = statistics.median(rates[size])
        result["sizes"][str(size)] = {
            "items_s": round(median, 1),
            "rounds": [round(r, 1) for r in rates[size]],
            "ratio": round(median / base, 2),
        }
        print(f"batch size {size:4d}: {median:8.1f} items/s  {median / base:5.2f}x")
    (ROOT / "results" / "embed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

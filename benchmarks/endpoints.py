"""One batch run over one server and over two equal ones: the items/s ratio.

    .venv/bin/python benchmarks/endpoints.py            # 3 rounds of 10,000 items, ~2 min
    .venv/bin/python benchmarks/endpoints.py --quick    # 1 round of 4,000 items

Each server is a :class:`lmlink.testing.ShapeServer` of the continuous-batching shape
(256 sequences, 8 ms + 0.1 ms per sequence per step, 16 steps a request) in a process of its
own; the runner uses its default settings (adaptive limit per endpoint, streamed requests),
so the ratio says what a user gets by adding ``-e URL2``. Every round runs both cases, in
alternating order, each into a fresh output that is checked to hold every id once; the
median of the per-round ratios is reported. Writes ``benchmarks/results/endpoints.json``.
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

import lmlink

ROOT = Path(__file__).resolve().parent
_SERVER = (
    "import sys; from lmlink.testing import SHAPES, ShapeServer; "
    "srv = ShapeServer(SHAPES[sys.argv[1]]).start(); print(srv.url, flush=True); "
    "sys.stdin.read()"
)


def start_server(shape: str) -> tuple[subprocess.Popen[str], str]:
    """A shape server in its own process; it ends when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, shape],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"the shape server did not start: {url!r}")
    return proc, url


def run_once(urls: list[str], items: int, workdir: Path) -> dict[str, Any]:
    """One batch of ``items`` over ``urls``; items/s and each endpoint's share."""
    rows = [{"id": f"i{n}", "prompt": f"question {n}"} for n in range(items)]
    out = workdir / f"out-{len(urls)}-{time.monotonic_ns()}.jsonl"
    started, cpu = time.perf_counter(), time.process_time()
    summary = lmlink.run_batch(rows, out, endpoint=urls, model="fake-model")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    ids = [json.loads(line).get("id") for line in out.read_text().splitlines()]
    ids = [i for i in ids if i is not None]
    if summary.ok != items or sorted(ids) != sorted(r["id"] for r in rows):
        raise RuntimeError(f"{len(urls)} endpoint(s): wrong output ({summary.ok} ok)")
    shares = {e.url: e.ok for e in getattr(summary, "endpoints", [])}
    return {
        "endpoints": len(urls),
        "items_s": items / elapsed,
        "runner_cpu": cpu / elapsed,  # 1.0: the runner used a whole core
        "shares": shares,
        "settled": summary.concurrency_settled,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--shape", default="batching")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    items = args.items or (4000 if args.quick else 10000)
    servers = [start_server(args.shape) for _ in range(2)]
    urls = [url for _, url in servers]
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                order = [[urls[0]], urls] if r % 2 == 0 else [urls, [urls[0]]]
                got = {len(u): run_once(u, items, Path(tmp)) for u in order}
                ratio = got[2]["items_s"] / got[1]["items_s"]
                results.append({"one": got[1], "two": got[2], "ratio": ratio})
                print(
                    f"round {r + 1}: one server {got[1]['items_s']:.0f} items/s, "
                    f"two {got[2]['items_s']:.0f} items/s, ratio {ratio:.2f}x "
                    f"(shares {list(got[2]['shares'].values())}; runner CPU "
                    f"{got[1]['runner_cpu']:.0%} / {got[2]['runner_cpu']:.0%}; settled "
                    f"{got[1]['settled']} / {got[2]['settled']})",
                    flush=True,
                )
    finally:
        for proc, _ in servers:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
    report = {
        "shape": args.shape,
        "items": items,
        "rounds": results,
        "one_items_s": statistics.median(r["one"]["items_s"] for r in results),
        "two_items_s": statistics.median(r["two"]["items_s"] for r in results),
        "ratio": statistics.median(r["ratio"] for r in results),
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "endpoints.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"median: one {report['one_items_s']:.0f} items/s, two {report['two_items_s']:.0f} "
        f"items/s, ratio {report['ratio']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

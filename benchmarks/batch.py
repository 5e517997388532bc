"""The batch runner, measured: adaptive concurrency on three server shapes, the runner's
items/s against the client's requests/s, and peak memory against the number of items.

    .venv/bin/python benchmarks/batch.py            # everything (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/batch.py --quick    # shorter runs, smaller counts
    .venv/bin/python benchmarks/batch.py shapes     # one part: shapes, speed or memory

**shapes**: for each of :data:`lmlink.testing.SHAPES`, a :class:`~lmlink.testing.ShapeServer`
(in this process) answers ``lmlink batch --no-stream`` (a subprocess): once with the
default (adaptive) concurrency and once per hand-picked fixed concurrency. Each run is
sized from the shape's model to last about as long as asked. Items/s is over the run
(the summary's elapsed time, ramp-up included); p50 is the median ``latency_s`` of the
output. Targets: default >= 90 % of the best hand-picked items/s, and its p50 <= 2.5x that
of the smallest hand-picked concurrency reaching 90 %.

**speed**: ``benchmarks/server.py`` (its own process, pinned to the first CPU) answers
``AsyncClient`` at 64 requests in flight (``_worker.py``) and ``lmlink batch --no-stream``
(pinned to the other CPU), alternately, in rounds; the median in-round ratio of the runner's
items/s to the client's requests/s is reported (target >= 0.4x).

**memory**: peak RSS (``ru_maxrss`` of the ``lmlink batch`` process, from ``wait4``) for a
run of 20,000 and of 200,000 items and for resuming each finished output (nothing left to
do), on the same fast server; the growth per extra item is the target (<= 100 bytes). Then
one run of 1,000,000 items (``--quick``: 100,000).

Writes ``benchmarks/results/batch.json`` and ``batch.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _harness import HERE, PYTHON, child_env, pin_to, run_json, running_server, split_cpus

from lmlink.testing import SHAPES, ServerShape, ShapeServer

RESULTS = HERE / "results"
LMLINK = [PYTHON, "-c", "from lmlink.cli import main; main()"]
HAND_PICKED = {
    "batching": [16, 64, 128, 256, 512],
    "slots": [1, 2, 4, 8, 16, 64],
    "queue": [1, 2, 4, 8],
}


def _write_input(path: Path, n: int) -> Path:
    if path.exists() and path.stat().st_size:
        return path
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f'{{"id": "r{i:08d}", "prompt": "Say hello to number {i}"}}\n')
    return path


def _batch(
    inp: Path,
    out: Path,
    url: str,
    model: str,
    concurrency: str | None,
    *,
    cpu_set: set[int] | None = None,
    fixed: bool = False,
) -> dict[str, Any]:
    """One ``lmlink batch --no-stream`` run; its summary figures and peak RSS."""
    args = [*LMLINK, "batch", str(inp), "-o", str(out), "-e", url, "-m", model]
    args += ["--no-stream", "--progress", "off", "--max-tokens", "16"]
    if concurrency is not None:
        args += ["-c", concurrency]
    env = child_env()
    if fixed:
        args = [PYTHON, str(HERE / "_fixed.py"), *args[3:]]  # the same, at exactly N
    started = time.perf_counter()
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True
    )
    pin_to(proc.pid, cpu_set)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"lmlink batch failed ({proc.returncode}):\n{err[-2000:]}")
    found = re.search(r"in ([\d.]+) s:", err)
    elapsed = float(found.group(1)) if found else wall
    limit = re.search(r"concurrency (\d+)-(\d+), settled at (\d+)", err)
    return {
        "elapsed_s": elapsed,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6,
        "limits": [int(x) for x in limit.groups()] if limit else None,
        "stderr": err[-600:],
    }


def _p50(out: Path) -> float:
    values: list[float] = []
    with out.open("rb") as f:
        for line in f:
            record = json.loads(line)
            if record.get("latency_s") is not None:
                values.append(record["latency_s"])
    return statistics.median(values)


# -- shapes ------------------------------------------------------------------------------


def _shape_run(
    shape: ServerShape, concurrency: int | None, seconds: float, tmp: Path
) -> dict[str, Any]:
    level = concurrency or shape.slots
    items = max(40, int(shape.rate(level) * seconds))
    if concurrency is None:
        items = max(40, int(shape.capacity * seconds))
    inp = _write_input(tmp / f"shape-{items}.jsonl", items)
    out = tmp / "shape-out.jsonl"
    out.unlink(missing_ok=True)
    with ShapeServer(shape) as server:
        got = _batch(
            inp,
            out,
            server.url,
            "fake-model",
            None if concurrency is None else str(concurrency),
            fixed=concurrency is not None,
        )
        rejected = server.rejected
    got.update(items=items, rate=items / got["elapsed_s"], p50=_p50(out), rejected=rejected)
    got.pop("stderr")
    return got


def shapes(quick: bool, tmp: Path) -> dict[str, Any]:
    seconds, default_seconds = (4.0, 12.0) if quick else (8.0, 60.0)
    out: dict[str, Any] = {}
    for name, shape in SHAPES.items():
        fixed = {n: _shape_run(shape, n, seconds, tmp) for n in HAND_PICKED[name]}
        auto = _shape_run(shape, None, default_seconds, tmp)
        best_n = max(fixed, key=lambda n: fixed[n]["rate"])
        best = fixed[best_n]["rate"]
        smallest = min(n for n in fixed if fixed[n]["rate"] >= 0.9 * best)
        out[name] = {
            "shape": shape.name,
            "fixed": fixed,
            "auto": auto,
            "best": best_n,
            "smallest_90": smallest,
            "throughput_ratio": auto["rate"] / best,
            "p50_ratio": auto["p50"] / fixed[smallest]["p50"],
        }
        print(
            f"{name}: default {auto['rate']:.0f}/s p50 {auto['p50'] * 1000:.0f} ms "
            f"(limits {auto['limits']}); best {best:.0f}/s at {best_n}; "
            f"ratio {out[name]['throughput_ratio']:.2f}, p50 ratio {out[name]['p50_ratio']:.2f}",
            file=sys.stderr,
        )
    return out


# -- speed -------------------------------------------------------------------------------


def speed(quick: bool, tmp: Path) -> dict[str, Any]:
    rounds, items = (2, 20_000) if quick else (3, 40_000)
    server_cpus, client_cpus = split_cpus(True)
    inp = _write_input(tmp / f"speed-{items}.jsonl", items)
    rows: list[dict[str, Any]] = []
    with running_server(cpu_set=server_cpus) as (port, _):
        url = f"http://127.0.0.1:{port}/v1"
        plan = {
            "levels": [64],
            "seconds": 2.0,
            "warm_seconds": 0.3,
            "stream_one": 50,
            "stream_many": [2, 20],
            "stream_seconds": 0.05,
        }
        for _ in range(rounds):
            client, err = run_json(
                [str(HERE / "_worker.py"), "lmlink", url, json.dumps(plan)],
                cpu_set=client_cpus,
                timeout=120,
            )
            if client is None:
                raise RuntimeError(f"the client benchmark failed: {err}")
            rps = client["rps"]["64"]["per_s"]
            row: dict[str, Any] = {"client_rps": rps}
            for label, conc in (("auto", None), ("c64", "64")):
                out = tmp / "speed-out.jsonl"
                out.unlink(missing_ok=True)
                got = _batch(inp, out, url, "bench-model", conc, cpu_set=client_cpus)
                row[label] = items / got["elapsed_s"]
                row[f"{label}_wall"] = items / got["wall_s"]
                row[f"{label}_limits"] = got["limits"]
            rows.append(row)
            print(f"speed round: {row}", file=sys.stderr)
    return {
        "items": items,
        "rounds": rows,
        "client_rps": statistics.median(r["client_rps"] for r in rows),
        "auto": statistics.median(r["auto"] for r in rows),
        "c64": statistics.median(r["c64"] for r in rows),
        "ratio_auto": statistics.median(r["auto"] / r["client_rps"] for r in rows),
        "ratio_c64": statistics.median(r["c64"] / r["client_rps"] for r in rows),
    }


# -- memory ------------------------------------------------------------------------------


def memory(quick: bool, tmp: Path) -> dict[str, Any]:
    sizes = (20_000, 200_000)
    big = 100_000 if quick else 1_000_000
    server_cpus, client_cpus = split_cpus(True)
    out: dict[str, Any] = {}
    with running_server(cpu_set=server_cpus) as (port, _):
        url = f"http://127.0.0.1:{port}/v1"
        for n in sizes:
            inp = _write_input(tmp / f"mem-{n}.jsonl", n)
            dst = tmp / f"mem-out-{n}.jsonl"
            dst.unlink(missing_ok=True)
            run = _batch(inp, dst, url, "bench-model", "64", cpu_set=client_cpus)
            resume = _batch(inp, dst, url, "bench-model", "64", cpu_set=client_cpus)
            out[str(n)] = {
                "run_mb": run["peak_rss_mb"],
                "resume_mb": resume["peak_rss_mb"],
                "run_items_s": n / run["elapsed_s"],
            }
            dst.unlink()
            print(f"memory {n}: {out[str(n)]}", file=sys.stderr)
        a, b = (out[str(n)] for n in sizes)
        extra = sizes[1] - sizes[0]
        out["run_bytes_per_item"] = (b["run_mb"] - a["run_mb"]) * 1e6 / extra
        out["resume_bytes_per_item"] = (b["resume_mb"] - a["resume_mb"]) * 1e6 / extra
        inp = _write_input(tmp / f"mem-{big}.jsonl", big)
        dst = tmp / f"mem-out-{big}.jsonl"
        dst.unlink(missing_ok=True)
        run = _batch(inp, dst, url, "bench-model", "64", cpu_set=client_cpus)
        resume = _batch(inp, dst, url, "bench-model", "64", cpu_set=client_cpus)
        out["big"] = {
            "items": big,
            "run_mb": run["peak_rss_mb"],
            "resume_mb": resume["peak_rss_mb"],
            "run_s": run["wall_s"],
            "resume_s": resume["wall_s"],
            "output_mb": dst.stat().st_size / 1e6,
        }
        dst.unlink()
        print(f"memory {big}: {out['big']}", file=sys.stderr)
    return out


# -- report ------------------------------------------------------------------------------


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _shapes_md(shapes: dict[str, Any]) -> list[str]:
    lines = [
        "**Adaptive concurrency on three server shapes** (16 decode steps per request on "
        "average; `lmlink batch --no-stream`; default runs include their ramp-up)",
        "",
        "| server shape | default: items/s, p50 | its limit: range, settled | best hand-picked "
        "| smallest reaching 90 %: p50 | default vs best | p50 vs that |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in shapes.values():
        fixed = {str(n): v for n, v in r["fixed"].items()}  # int keys, or str from JSON
        a, best, small = r["auto"], fixed[str(r["best"])], fixed[str(r["smallest_90"])]
        low, high, settled = a["limits"] or (0, 0, 0)
        thr, lat = r["throughput_ratio"], r["p50_ratio"]
        lines.append(
            f"| {r['shape']} | {a['rate']:.0f}/s, {_ms(a['p50'])} | {low}-{high}, {settled} "
            f"| {best['rate']:.0f}/s at {r['best']} | {r['smallest_90']}: {_ms(small['p50'])} "
            f"| {thr * 100:.0f} % {_ok(thr >= 0.9)} | {lat:.2f}x {_ok(lat <= 2.5)} |"
        )
    lines += ["", "Every hand-picked run (fixed concurrency: items/s, p50):", ""]
    for key, r in shapes.items():
        runs = r["fixed"].items()
        lines.append(
            f"- {key}: " + ", ".join(f"{n}: {v['rate']:.0f}/s {_ms(v['p50'])}" for n, v in runs)
        )
    return [*lines, ""]


def _speed_md(s: dict[str, Any]) -> list[str]:
    auto, c64 = s["ratio_auto"], s["ratio_c64"]
    return [
        "**Runner vs client** (fast fake server; `AsyncClient` at 64 in flight vs "
        f"`lmlink batch --no-stream`, {s['items']:,} items; medians of {len(s['rounds'])} rounds)",
        "",
        "| | items or requests/s | vs client |",
        "|---|---:|---:|",
        f"| AsyncClient, 64 in flight | {s['client_rps']:,.0f} | 1.00x |",
        f"| lmlink batch, default | {s['auto']:,.0f} | {auto:.2f}x {_ok(auto >= 0.4)} |",
        f"| lmlink batch -c 64 | {s['c64']:,.0f} | {c64:.2f}x {_ok(c64 >= 0.4)} |",
        "",
    ]


def _memory_md(m: dict[str, Any]) -> list[str]:
    a, b, big = m["20000"], m["200000"], m["big"]
    run, resume = m["run_bytes_per_item"], m["resume_bytes_per_item"]
    return [
        "**Peak RSS of `lmlink batch --no-stream -c 64`** (fast fake server)",
        "",
        "| items | peak RSS, run | peak RSS, resuming the finished output |",
        "|---|---:|---:|",
        f"| 20,000 | {a['run_mb']:.1f} MB | {a['resume_mb']:.1f} MB |",
        f"| 200,000 | {b['run_mb']:.1f} MB | {b['resume_mb']:.1f} MB |",
        f"| growth per item | {run:.0f} bytes {_ok(run <= 100)} "
        f"| {resume:.0f} bytes {_ok(resume <= 100)} |",
        f"| {big['items']:,} | {big['run_mb']:.1f} MB ({big['run_s']:.0f} s) "
        f"| {big['resume_mb']:.1f} MB ({big['resume_s']:.0f} s) |",
        "",
    ]


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"Batch benchmark, {res['when']}, {res['mode']} run, {res['seconds']:.0f} s; "
        f"1-minute load average before: {res['load_before']:.1f}."
        + (
            f" The shapes part is from a run of that part alone, {res['shapes_when']}."
            if "shapes_when" in res
            else ""
        ),
        "",
    ]
    if "shapes" in res:
        lines += _shapes_md(res["shapes"])
    if "speed" in res:
        lines += _speed_md(res["speed"])
    if "memory" in res:
        lines += _memory_md(res["memory"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["shapes", "speed", "memory"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="redo batch.md from batch.json")
    args = parser.parse_args()
    if args.report_only:
        text = markdown(json.loads((RESULTS / "batch.json").read_text()))
        (RESULTS / "batch.md").write_text(text + "\n")
        print(text)
        return
    started = time.time()
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "mode": "quick" if args.quick else "full",
        "load_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="lmlink-batch-bench-") as name:
        tmp = Path(name)
        for part in args.parts:
            res[part] = {"shapes": shapes, "speed": speed, "memory": memory}[part](args.quick, tmp)
    res["seconds"] = time.time() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    (RESULTS / "batch.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Profile lmlink's hot paths against the fake server: cProfile, and py-spy if asked.

    .venv/bin/python benchmarks/profile_lmlink.py [--requests 19200] [--chunks 20000]
                                                  [--top 30] [--py-spy]

Two cases, each after a warm-up: ``AsyncClient.chat`` with 64 requests in flight, and one
long ``AsyncClient.stream`` read to the end. Prints, per case, the functions with the most
own time in µs per request (or per chunk; wall clock, time spent waiting in ``epoll`` left
out), and writes the tables to ``benchmarks/results/profile-*.txt``. cProfile's overhead
inflates small Python functions several times over: read the ranking, not the absolute
numbers. ``--py-spy`` also samples both cases (``py-spy record`` on a ``_worker.py``
subprocess: no instrumentation overhead) and reports each function's share of the samples.
The reliable way to size a change is an A/B run of the two versions in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clients import LmlinkAsync
from _harness import HERE, PYTHON, child_env, pin_to, running_server, split_cpus

RESULTS = HERE / "results"
IN_FLIGHT = 64


async def _chat_load(bench: LmlinkAsync, requests: int) -> None:
    per = max(1, requests // IN_FLIGHT)

    async def worker() -> None:
        for _ in range(per):
            await bench.chat()

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def _table(prof: cProfile.Profile, count: int, unit: str, top: int) -> str:
    """The ``top`` functions by own time, in µs per ``unit``."""
    stats = pstats.Stats(prof)
    rows = []
    total = 0.0
    for (path, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "poll" in func and "epoll" in func:
            continue  # waiting for the server, not work
        total += tottime
        where = f"{Path(path).name}:{line}({func})" if line else func
        if "/lmlink/" in path:
            where = "lmlink/" + where
        rows.append((tottime, cumtime, calls, where))
    rows.sort(reverse=True)
    out = io.StringIO()
    out.write(
        f"total {total / count * 1e6:.2f} µs/{unit} under cProfile "
        "(wall clock, epoll waits excluded)\n"
    )
    out.write(f"{'own µs':>8} {'cum µs':>8} {'calls/' + unit:>12}  function\n")
    for tottime, cumtime, calls, where in rows[:top]:
        out.write(
            f"{tottime / count * 1e6:8.2f} {cumtime / count * 1e6:8.2f} "
            f"{calls / count:12.2f}  {where}\n"
        )
    return out.getvalue()


def profile_cases(base: str, requests: int, chunks: int, top: int) -> dict[str, str]:
    async def main() -> dict[str, str]:
        bench = LmlinkAsync(base)
        try:
            await _chat_load(bench, IN_FLIGHT * 20)
            prof = cProfile.Profile()
            prof.enable()
            await _chat_load(bench, requests)
            prof.disable()
            chat = _table(prof, requests, "request", top)

            await bench.stream(1000)
            prof = cProfile.Profile()
            prof.enable()
            await bench.stream(chunks)
            prof.disable()
            stream = _table(prof, chunks, "chunk", top)
        finally:
            await bench.aclose()
        return {"chat": chat, "stream": stream}

    return asyncio.run(main())


def _aggregate(raw: Path, top: int) -> str:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if "_find_and_load" in stack:
            continue  # the worker importing its modules, not the case profiled
        # "func (path:line)" -> "func (file)": lines of one function merged.
        frames = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    out = io.StringIO()
    out.write(f"{total} samples; own = samples in the function itself\n")
    out.write(f"{'own %':>6} {'incl %':>7}  function\n")
    for frame, n in own.most_common(top):
        out.write(f"{n / total * 100:6.1f} {incl[frame] / total * 100:7.1f}  {frame}\n")
    return out.getvalue()


def py_spy(base: str, top: int, cpu_set: set[int] | None) -> dict[str, str]:
    """Sample both cases in a ``_worker.py`` subprocess with py-spy; return text tables."""
    exe = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if exe is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return {}
    cases: dict[str, dict[str, Any]] = {
        "chat": {"levels": [IN_FLIGHT], "seconds": 4.0, "stream_one": 100},
        "stream": {"levels": [], "stream_one": 20_000, "stream_seconds": 4.0},
    }
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in cases.items():
            plan |= {"stream_many": [1, 10], "stream_seconds": plan.get("stream_seconds", 0.01)}
            raw = Path(tmp) / f"{name}.txt"
            cmd = [exe, "record", "-r", "500", "-f", "raw", "-o", str(raw), "--", PYTHON]
            cmd += [str(HERE / "_worker.py"), "lmlink", base, json.dumps(plan)]
            proc = subprocess.Popen(
                cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            pin_to(proc.pid, cpu_set)
            proc.wait(timeout=120)
            if raw.exists():
                tables[f"py-spy-{name}"] = _aggregate(raw, top)
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=19_200)
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    args = parser.parse_args()
    server_cpus, client_cpus = split_cpus(not args.no_pin)
    pin_to(0, client_cpus)
    with running_server(cpu_set=server_cpus) as (port, _):
        base = f"http://127.0.0.1:{port}/v1"
        tables = profile_cases(base, args.requests, args.chunks, args.top)
        if args.py_spy:
            tables |= py_spy(base, args.top, client_cpus)
    RESULTS.mkdir(exist_ok=True)
    titles = {
        "chat": f"cProfile: AsyncClient.chat, {IN_FLIGHT} in flight, {args.requests} requests",
        "stream": f"cProfile: AsyncClient.stream, one {args.chunks}-chunk stream",
        "py-spy-chat": f"py-spy: AsyncClient.chat, {IN_FLIGHT} in flight, 4 s",
        "py-spy-stream": "py-spy: AsyncClient.stream, 20,000-chunk streams, 4 s",
    }
    for name, text in tables.items():
        (RESULTS / f"profile-{name}.txt").write_text(f"{titles[name]}\n{text}")
        print(f"== {titles[name]}\n{text}")


if __name__ == "__main__":
    main()

"""One client, measured in a subprocess of its own (started by ``run.py``).

    python benchmarks/_worker.py CLIENT BASE_URL PLAN_JSON

``PLAN_JSON`` says what to measure (see :class:`Plan`); the results are printed as one JSON
object on stdout. Modes:

* ``throughput``: non-streamed requests/s at each in-flight level, then chunks/s of one long
  stream and of many concurrent streams. Each figure comes from a timed window after a
  warm-up; CPU is this process's ``time.process_time()`` (all threads) over the window.
* ``memory``: the RSS high-water mark (``ru_maxrss``) after a run at ``memory_in_flight``
  requests in flight, in a process that did nothing else.

Async clients keep N requests in flight with N coroutines, sync clients with N threads.
Every loop is bounded by a count and a deadline; every answer is checked (``BenchError``
aborts the run: a wrong answer never becomes a number).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clients import CLIENTS, AsyncBench, SyncBench

_TICK = os.sysconf("SC_CLK_TCK")
_MAX_PER_WORKER = 1_000_000  # a count bound on every request loop, beside its deadline
_MAX_STREAM_REPS = 200


@dataclass
class Plan:
    mode: str = "throughput"
    levels: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    seconds: float = 1.5  # each measured window
    warm_seconds: float = 0.3
    stream_one: int = 20_000  # tokens in the one long stream
    stream_many: tuple[int, int] = (64, 500)  # concurrent streams, tokens each
    stream_seconds: float = 1.0  # streams repeat until this much time has passed
    memory_in_flight: int = 256
    memory_requests: int = 5_000
    server_pid: int = 0  # the fake server, to report how busy it was (0: don't)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Window:
    """Wall time, this process's CPU time and the server's CPU time over a measurement."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> Window:
        gc.collect()
        self.server0 = proc_cpu(self.server_pid) if self.server_pid else 0.0
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        if self.server_pid:
            self.server = proc_cpu(self.server_pid) - self.server0

    def result(self, count: int, unit: str) -> dict[str, float]:
        out = {
            unit: count,
            "seconds": self.wall,
            "per_s": count / self.wall,
            "cpu_us": self.cpu / count * 1e6,
            "client_busy": self.cpu / self.wall,
        }
        if self.server_pid:
            out["server_busy"] = self.server / self.wall
        return out


# -- async -------------------------------------------------------------------------------------


async def _async_load(call: Callable[[], Awaitable[None]], in_flight: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds

    async def worker() -> int:
        done = 0
        while done < _MAX_PER_WORKER and time.perf_counter() < deadline:
            await call()
            done += 1
        return done

    return sum(await asyncio.gather(*(worker() for _ in range(in_flight))))


async def _async_streams(bench: AsyncBench, streams: int, n: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < _MAX_STREAM_REPS and (reps == 0 or time.perf_counter() < deadline):
        await asyncio.gather(*(bench.stream(n) for _ in range(streams)))
        reps += 1
    return reps * streams * n


async def _async_throughput(bench: AsyncBench, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"rps": {}}
    for level in plan.levels:
        await _async_load(bench.chat, level, plan.warm_seconds)
        with Window(plan.server_pid) as w:
            count = await _async_load(bench.chat, level, plan.seconds)
        out["rps"][str(level)] = w.result(count, "requests")
    await bench.stream(100)
    with Window(plan.server_pid) as w:
        chunks = await _async_streams(bench, 1, plan.stream_one, plan.stream_seconds)
    out["stream_one"] = w.result(chunks, "chunks")
    streams, n = plan.stream_many
    with Window(plan.server_pid) as w:
        chunks = await _async_streams(bench, streams, n, plan.stream_seconds)
    out["stream_many"] = w.result(chunks, "chunks")
    return out


async def _async_memory(bench: AsyncBench, plan: Plan) -> dict[str, Any]:
    per = max(1, plan.memory_requests // plan.memory_in_flight)

    async def worker() -> None:
        for _ in range(per):
            await bench.chat()

    await asyncio.gather(*(worker() for _ in range(plan.memory_in_flight)))
    return {"requests": per * plan.memory_in_flight, "in_flight": plan.memory_in_flight}


# -- sync --------------------------------------------------------------------------------------


def _sync_load(call: Callable[[], None], threads: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds

    def worker() -> int:
        done = 0
        while done < _MAX_PER_WORKER and time.perf_counter() < deadline:
            call()
            done += 1
        return done

    if threads == 1:
        return worker()
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda _: worker(), range(threads)))


def _sync_streams(bench: SyncBench, streams: int, n: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    reps = 0
    with ThreadPoolExecutor(streams) as pool:
        while reps < _MAX_STREAM_REPS and (reps == 0 or time.perf_counter() < deadline):
            if streams == 1:
                bench.stream(n)
            else:
                list(pool.map(bench.stream, [n] * streams))
            reps += 1
    return reps * streams * n


def _sync_throughput(bench: SyncBench, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"rps": {}}
    for level in plan.levels:
        _sync_load(bench.chat, level, plan.warm_seconds)
        with Window(plan.server_pid) as w:
            count = _sync_load(bench.chat, level, plan.seconds)
        out["rps"][str(level)] = w.result(count, "requests")
    bench.stream(100)
    with Window(plan.server_pid) as w:
        chunks = _sync_streams(bench, 1, plan.stream_one, plan.stream_seconds)
    out["stream_one"] = w.result(chunks, "chunks")
    streams, n = plan.stream_many
    with Window(plan.server_pid) as w:
        chunks = _sync_streams(bench, streams, n, plan.stream_seconds)
    out["stream_many"] = w.result(chunks, "chunks")
    return out


def _sync_memory(bench: SyncBench, plan: Plan) -> dict[str, Any]:
    threads = plan.memory_in_flight
    per = max(1, plan.memory_requests // threads)

    def worker(_: int) -> None:
        for _ in range(per):
            bench.chat()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return {"requests": per * threads, "in_flight": threads}


# -- entry point -------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(name: str, base: str, plan: Plan) -> dict[str, Any]:
    spec = CLIENTS[name]
    started = time.perf_counter()
    out: dict[str, Any] = {"client": name}
    if spec.kind == "async":

        async def main() -> dict[str, Any]:
            # Made inside the loop: aiohttp's session must be created in a running loop.
            abench = cast(AsyncBench, spec.make(base))
            out["rss_after_import_mb"] = _rss_mb()
            try:
                if plan.mode == "memory":
                    return await _async_memory(abench, plan)
                return await _async_throughput(abench, plan)
            finally:
                await abench.aclose()

        out.update(asyncio.run(main()))
    else:
        sbench = cast(SyncBench, spec.make(base))
        out["rss_after_import_mb"] = _rss_mb()
        try:
            if plan.mode == "memory":
                out.update(_sync_memory(sbench, plan))
            else:
                out.update(_sync_throughput(sbench, plan))
        finally:
            sbench.close()
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    out["wall_s"] = time.perf_counter() - started
    return out


def main() -> None:
    name, base, raw = sys.argv[1:4]
    fields = json.loads(raw)
    if "stream_many" in fields:
        fields["stream_many"] = tuple(fields["stream_many"])
    print(json.dumps(measure(name, base, Plan(**fields))), flush=True)


if __name__ == "__main__":
    main()

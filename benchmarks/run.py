"""lmlink side by side with the openai SDK, raw aiohttp and raw httpx, in one run.

    .venv/bin/python benchmarks/run.py            # the full run (about 11 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # small counts, about 2 minutes
    python3 tasks.py bench                        # the same full run, venv made for you

One fake server (``server.py``, its own process, pinned to the first CPU) serves every
client; each client runs in a subprocess of its own (``_worker.py``, pinned to the other
CPUs) so that imports and memory never mix. The run, in order:

1. the server's ceiling, measured with ``wrk`` (skipped if wrk is not installed);
2. rounds: in each, every client once (the order rotates from round to round) measuring
   requests/s at 1, 16, 64 and 256 in flight (sync clients: 1 and 16 threads), chunks/s of
   one long stream and of 64 concurrent streams, and client CPU per request and per chunk;
   then every client's peak RSS in a fresh process with 256 requests in flight; then
   import times (fresh processes) and the wall time of ``lmlink --help``;
3. ``leak.py``: 100,000 requests through one AsyncClient, RSS and open fds sampled.

Every answer is checked (content, token counts, number of deltas); a client whose answers
are wrong fails its round instead of producing a number. Medians over rounds; ratios are
taken within each round, then their median is reported. Writes
``benchmarks/results/latest.json``, ``latest.md`` (the tables) and ``latest.png`` (the chart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clients import CLIENTS
from _common import chat_body
from _harness import HERE, PYTHON, child_env, pin_to, run_json, running_server, split_cpus
from _report import Round, chart, markdown, summarize, targets
from _worker import Plan

RESULTS = HERE / "results"
VENV_BIN = Path(PYTHON).parent


@dataclass
class Mode:
    name: str
    rounds: int
    plan: Plan
    memory_requests: int
    import_samples: int  # per round
    wrk_seconds: int
    leak_requests: int
    leak_every: int
    sync_levels: list[int] = field(default_factory=lambda: [1, 16])


MODES = {
    "full": Mode(
        "full",
        rounds=5,
        plan=Plan(seconds=1.5, warm_seconds=0.3, stream_one=20_000, stream_many=(64, 500)),
        memory_requests=2_048,
        import_samples=3,
        wrk_seconds=5,
        leak_requests=100_000,
        leak_every=10_000,
    ),
    "quick": Mode(
        "quick",
        rounds=2,
        plan=Plan(
            seconds=0.3,
            warm_seconds=0.1,
            stream_one=5_000,
            stream_many=(64, 100),
            stream_seconds=0.1,
        ),
        memory_requests=512,
        import_samples=1,
        wrk_seconds=2,
        leak_requests=20_000,
        leak_every=2_000,
    ),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the server's ceiling ----------------------------------------------------------------------


def wrk_ceiling(url: str, seconds: int) -> dict[str, Any]:
    """Requests/s the fake server answers for wrk (one wrk thread, on the client CPUs)."""
    exe = shutil.which("wrk")
    if exe is None:
        log("wrk not found (apt-get install wrk): the server's ceiling is not measured")
        return {}
    version = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True)
    out: dict[str, Any] = {"wrk": version.stdout.split("[")[0].strip() or "wrk"}
    cases = {
        "chat_64": (64, chat_body()),
        "chat_256": (256, chat_body()),
        "stream500_64": (64, chat_body(stream=True, max_tokens=500)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key, (connections, body) in cases.items():
            script = Path(tmp) / f"{key}.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = {json.dumps(body.decode())}\n"
            )
            cmd = [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
            done = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=seconds + 30
            )
            text = done.stdout
            rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
            bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
            errors = re.search(r"Socket errors:.*", text)
            out[key] = {
                "requests_per_s": float(rps.group(1)) if rps else None,
                "non_2xx": int(bad.group(1)) if bad else 0,
                "socket_errors": errors.group(0) if errors else None,
            }
            if key.startswith("stream") and rps:
                out[key]["chunks_per_s"] = float(rps.group(1)) * 500
            log(f"  wrk {key}: {out[key]}")
    return out


# -- import and start-up times -----------------------------------------------------------------


def _wall(cmd: list[str]) -> float:
    """Seconds from spawning ``cmd`` to its exit.

    ``subprocess.run(timeout=...)`` polls for the exit with sleeps that grow to 50 ms, which
    rounds every sample up to the next step of that ladder; a blocking ``wait()`` (with a
    timer to kill a hung child) measures the real time."""
    env = child_env()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    guard = threading.Timer(60, proc.kill)
    guard.start()
    try:
        code = proc.wait()
    finally:
        guard.cancel()
    elapsed = time.perf_counter() - started
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    return elapsed


def _importtime_ms(module: str) -> float:
    """``-X importtime`` cumulative microseconds of ``module``'s own import line, in ms."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", f"import {module}"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() == f" {module}":
            return int(parts[1]) / 1000
    raise RuntimeError(f"no importtime line for {module}")


class ImportTimes:
    """Import times by wall clock: ``python -c STMT`` minus ``python -c pass``, each sample
    paired with a baseline taken right before it."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.by_client: dict[str, list[float]] = {n: [] for n in names}
        self.lmlink_wall: list[float] = []
        self.lmlink_importtime: list[float] = []
        self.cli_help: list[float] = []

    def warm(self) -> None:
        """Write the bytecode caches (as an install does), so no sample compiles."""
        for stmt in {CLIENTS[n].imports for n in self.names} | {"import lmlink.cli"}:
            subprocess.run([PYTHON, "-c", stmt], env=child_env(), check=True, timeout=120)

    def sample(self) -> None:
        for name in self.names:
            base = _wall([PYTHON, "-c", "pass"])
            self.by_client[name].append(
                (_wall([PYTHON, "-c", CLIENTS[name].imports]) - base) * 1000
            )
        base = _wall([PYTHON, "-c", "pass"])
        self.lmlink_wall.append((_wall([PYTHON, "-c", "import lmlink"]) - base) * 1000)
        self.lmlink_importtime.append(_importtime_ms("lmlink"))
        lmlink_exe = VENV_BIN / "lmlink"
        if lmlink_exe.exists():
            self.cli_help.append(_wall([str(lmlink_exe), "--help"]) * 1000)

    def summary(self) -> dict[str, Any]:
        def med(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        return {
            "by_client_ms": {n: med(v) for n, v in self.by_client.items()},
            "import_lmlink_wall_ms": med(self.lmlink_wall),
            "import_lmlink_importtime_ms": med(self.lmlink_importtime),
            "cli_help_ms": med(self.cli_help),
            "samples": {
                "by_client_ms": self.by_client,
                "import_lmlink_wall_ms": self.lmlink_wall,
                "import_lmlink_importtime_ms": self.lmlink_importtime,
                "cli_help_ms": self.cli_help,
            },
        }


# -- the run -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
    }


def versions(names: list[str]) -> dict[str, str]:
    dists = {"lmlink", "orjson"} | {d for n in names for d in CLIENTS[n].dists}
    out = {}
    for dist in sorted(dists):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def client_plan(mode: Mode, name: str, server_pid: int) -> Plan:
    plan = Plan(**asdict(mode.plan))
    plan.server_pid = server_pid
    plan.memory_requests = mode.memory_requests
    if CLIENTS[name].kind == "sync":
        plan.levels = list(mode.sync_levels)
        plan.memory_in_flight = 16
    return plan


def run_rounds(
    mode: Mode, names: list[str], base: str, server_pid: int, cpu_set: set[int] | None
) -> tuple[list[Round], list[dict[str, float]], ImportTimes, list[str]]:
    rounds: list[Round] = []
    memory: list[dict[str, float]] = []
    imports = ImportTimes(names)
    failures: list[str] = []
    imports.warm()
    for r in range(mode.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        log(f"round {r + 1}/{mode.rounds}: {', '.join(order)}")
        rnd: Round = {}
        for name in order:
            plan = client_plan(mode, name, server_pid)
            args = [str(HERE / "_worker.py"), name, base, json.dumps(asdict(plan))]
            result, err = run_json(args, cpu_set=cpu_set, timeout=300)
            rnd[name] = result
            if result is None:
                failures.append(f"round {r + 1}, {name}: {err.strip()[-500:]}")
                log(f"  {name}: FAILED\n{err}")
            else:
                log(
                    f"  {name}: "
                    + ", ".join(
                        f"{lvl}: {row['per_s']:,.0f}/s" for lvl, row in result["rps"].items()
                    )
                    + f"; one stream {result['stream_one']['per_s']:,.0f} chunks/s"
                    + f"; {result['wall_s']:.1f} s"
                )
        rounds.append(rnd)
        peaks: dict[str, float] = {}
        for name in order:
            plan = client_plan(mode, name, 0)
            plan.mode = "memory"
            args = [str(HERE / "_worker.py"), name, base, json.dumps(asdict(plan))]
            result, err = run_json(args, cpu_set=cpu_set, timeout=300)
            if result is None:
                failures.append(f"round {r + 1}, {name} (memory): {err.strip()[-500:]}")
            else:
                peaks[name] = result["peak_rss_mb"]
        log("  peak RSS MB: " + ", ".join(f"{n} {v:.1f}" for n, v in peaks.items()))
        memory.append(peaks)
        for _ in range(mode.import_samples):
            imports.sample()
    return rounds, memory, imports, failures


def run_leak(mode: Mode, base: str, cpu_set: set[int] | None) -> dict[str, Any] | None:
    args = [str(HERE / "leak.py"), "--url", base, "--requests", str(mode.leak_requests)]
    args += ["--every", str(mode.leak_every)]
    result, err = run_json(args, cpu_set=cpu_set, timeout=600)
    log(err.strip())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="small counts, about 2 minutes")
    which.add_argument("--full", action="store_true", help="the full run (the default)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--clients", help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk ceiling")
    parser.add_argument("--no-leak", action="store_true", help="skip leak.py")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: redo tables, targets and chart from OUT/latest.json",
    )
    args = parser.parse_args()
    if args.report_only:
        report(json.loads((args.out / "latest.json").read_text()), args.out)
        return

    mode = MODES["quick" if args.quick else "full"]
    if args.rounds:
        mode.rounds = max(1, args.rounds)
    names = list(CLIENTS)
    if args.clients:
        names = [n.strip() for n in args.clients.split(",") if n.strip()]
        unknown = set(names) - set(CLIENTS)
        if unknown:
            parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    server_cpus, client_cpus = split_cpus(not args.no_pin)
    pin_to(0, client_cpus)  # this process, and so every child but the server
    meta: dict[str, Any] = {
        "mode": mode.name,
        "rounds": mode.rounds,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": platform.python_version(),
        "machine": machine(),
        "versions": versions(names),
        "pinning": {"server": sorted(server_cpus or []), "clients": sorted(client_cpus or [])},
        "plan": asdict(mode.plan),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "loadavg_start": os.getloadavg()[0],
    }
    log(
        f"{mode.name} run: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"Python {meta['python']}, pinning {meta['pinning']}"
    )
    with running_server(cpu_set=server_cpus) as (port, server_pid):
        base = f"http://127.0.0.1:{port}/v1"
        server: dict[str, Any] = {"workers": 1}
        if not args.no_wrk:
            log("server ceiling (wrk):")
            server.update(wrk_ceiling(base + "/chat/completions", mode.wrk_seconds))
        rounds, memory, imports, failures = run_rounds(mode, names, base, server_pid, client_cpus)
        leak = None if args.no_leak or "lmlink" not in names else run_leak(mode, base, client_cpus)
    document = {
        "meta": meta,
        "server": server,
        "imports": imports.summary(),
        "leak": leak,
        "failures": failures,
        "rounds": rounds,
        "memory_rounds": memory,
    }
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    meta["loadavg_end"] = os.getloadavg()[0]
    report(document, args.out)
    log(f"done in {meta['duration_s']:.0f} s; results in {args.out}/latest.{{json,md,png}}")
    sys.exit(1 if failures else 0)


def report(document: dict[str, Any], out_dir: Path) -> None:
    """Summaries, targets, tables and chart from the raw results; all written to ``out_dir``."""
    imports = document["imports"]
    summary = summarize(
        document["rounds"], document["memory_rounds"], imports["samples"]["by_client_ms"]
    )
    checks = targets(summary, {**imports, "leak": document["leak"]})
    document["summary"] = summary
    document["targets"] = [t.as_dict() for t in checks]
    table = markdown(summary, checks, document["meta"], document["server"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    (out_dir / "latest.md").write_text(table)
    chart(summary, document["meta"], out_dir / "latest.png")
    print(table)
    for failure in document["failures"]:
        print(f"FAILED: {failure}")


if __name__ == "__main__":
    main()

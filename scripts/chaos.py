#!/usr/bin/env python3
"""Chaos for the batch runner: ``lmlink batch`` killed with SIGKILL at random moments while a
faulty server answers and is restarted under it, then run once more to the end.

    .venv/bin/python scripts/chaos.py                  # 2,000 items, 20 kills, 2 restarts

The driver (this process) runs a ``lmlink.testing.FakeServer`` with random faults (5% 503
with ``Retry-After``, 2% connections cut, 1% stalls past the runner's idle timeout, 1%
malformed chunks) and starts the ``lmlink batch`` command line as a subprocess, again and
again, on the same input and output. Each run is SIGKILLed after a random time, except that
during ``--restarts`` of the runs the server is stopped and started again on the same port
instead: once briefly (the runner's retries ride it out) and once for 5-6 s (the runner
gives up with exit 1 and a summary, and the next run carries on). After
``--kills`` kills, one last run goes to the end. Checked after every run:

- every complete line is valid JSON with an input id, no id appears twice, and only a run
  that was killed may leave a torn last line (the next run must remove it);
- a run that ended by itself printed a summary whose ok / failed / already-done counts and
  errors by type are exactly the lines it appended;
- after the last run every input id appears exactly once and the file ends with a newline.

Prints what happened and exits 1 if any check failed. ``tests/test_reliability_chaos.py``
runs the same code with 300 items, 5 kills and 1 restart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlink.testing import FakeServer, Faults, RecordedRequest, Reply

__all__ = ["ChaosConfig", "ChaosError", "ChaosReport", "run_chaos"]

_SUMMARY = re.compile(r"^lmlink batch: (\d+) items?: (.*)$", re.MULTILINE)
_ERRORS = re.compile(r"^  errors: (.*)$", re.MULTILINE)


class ChaosError(AssertionError):
    """An invariant of the output file or the summary did not hold."""


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run's settings."""

    items: int = 2000
    kills: int = 20
    restarts: int = 2
    seed: int = 20260602
    concurrency: int = 8
    idle_timeout: float = 1.0
    kill_after: tuple[float, float] = (0.5, 2.0)  # seconds a run lives before SIGKILL
    # Seconds the server stays stopped, per restart: a short outage the runner's retries
    # ride out, then one long enough that the runner gives up (exit 1, summary printed).
    down_for: tuple[tuple[float, float], ...] = ((0.3, 1.5), (5.0, 6.0))
    final_timeout: float = 600.0
    p_503: float = 0.05
    p_cut: float = 0.02
    p_stall: float = 0.01
    p_malformed: float = 0.01


@dataclass
class RunRecord:
    """One ``lmlink batch`` process."""

    number: int
    killed: bool
    returncode: int
    lines_before: int
    lines_after: int
    torn_after: bool
    restarted_server: bool
    seconds: float
    summary: str = ""


@dataclass
class ChaosReport:
    """What a chaos run did and saw."""

    config: ChaosConfig
    runs: list[RunRecord] = field(default_factory=list)
    restarts: int = 0
    summaries_checked: int = 0
    torn_lines_repaired: int = 0
    final_ok: int = 0
    final_failed: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def kills(self) -> int:
        return sum(r.killed for r in self.runs)

    def table(self) -> str:
        cfg = self.config
        lines = [
            f"chaos: {cfg.items} items, {self.kills} SIGKILLs, {self.restarts} server restarts, "
            f"{len(self.runs)} runs in {self.elapsed_s:.1f} s (seed {cfg.seed})",
            "",
            f"{'run':>4} {'how it ended':<22} {'lines before':>12} {'after':>6} {'torn':>5} "
            f"{'seconds':>8}  server",
        ]
        for r in self.runs:
            how = "SIGKILL" if r.killed else f"exit {r.returncode}"
            lines.append(
                f"{r.number:>4} {how:<22} {r.lines_before:>12} {r.lines_after:>6} "
                f"{'yes' if r.torn_after else '':>5} {r.seconds:>8.1f}  "
                f"{'stopped + started' if r.restarted_server else ''}"
            )
        lines += [
            "",
            f"final file: {self.final_ok + self.final_failed} lines = {self.final_ok} ok + "
            f"{self.final_failed} errors {dict(sorted(self.errors_by_type.items()))}",
            f"torn lines left by kills and removed by the next run: {self.torn_lines_repaired}",
            f"summaries checked against the lines their run appended: {self.summaries_checked}",
            f"faults injected by the server: {dict(sorted(self.faults.items()))}",
        ]
        return "\n".join(lines)


def _answer(request: RecordedRequest) -> Reply:
    prompt = request.json["messages"][-1]["content"]
    # Long lines (a write could tear), paced so that a run lasts long enough to be killed.
    return Reply(content=f"answer to {prompt}: " + "lorem ipsum " * 25, chunk_chars=60, delay=0.02)


def _command() -> list[str]:
    script = Path(sys.executable).with_name("lmlink")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from lmlink.cli import main; main()"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMLINK_", "OPENAI_"))}
    env.pop("PYTEST_CURRENT_TEST", None)
    env["LMLINK_NO_DISCOVERY"] = "1"
    return env


def read_output(path: Path, ids: set[str]) -> tuple[list[dict[str, Any]], bool]:
    """The complete lines of ``path`` (checked) and whether a torn last line follows them."""
    data = path.read_bytes() if path.exists() else b""
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, line in enumerate(parts[:-1], 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ChaosError(f"line {n} is not valid JSON: {line[:120]!r}") from exc
        if n == 1 and isinstance(record, dict) and record.get("lmlink") == "batch-output":
            continue  # the header record: settings, not a result
        if not isinstance(record, dict) or record.get("id") not in ids:
            raise ChaosError(f"line {n} has no input id: {line[:120]!r}")
        if ("error" in record) == ("content" in record):
            raise ChaosError(f"line {n} is neither an answer nor an error: {line[:120]!r}")
        if record["id"] in seen:
            raise ChaosError(f"id {record['id']} appears twice (line {n})")
        seen.add(record["id"])
        records.append(record)
    return records, torn


def check_summary(stderr: str, before: int, appended: list[dict[str, Any]]) -> str:
    """The summary a run printed must say exactly what it appended; returns its first line."""
    found = _SUMMARY.findall(stderr)
    lines = stderr.strip().splitlines()
    if not found and not appended and lines and lines[-1].startswith("lmlink: "):
        return lines[-1]  # stopped before any item was done: one line says why
    if not found:
        raise ChaosError(f"no summary in the output of a run that ended by itself:\n{stderr}")
    _total, counts = found[-1]
    said = {
        word: int(n)
        for n, word in re.findall(r"(\d+) (ok|failed|already done|from the cache)", counts)
    }
    ok = sum("content" in r for r in appended)
    failed = len(appended) - ok
    if (said.get("ok", 0), said.get("failed", 0), said.get("already done", 0)) != (
        ok,
        failed,
        before,
    ):
        raise ChaosError(
            f"summary {counts!r} does not match the file: {ok} ok and {failed} failed lines "
            f"appended after {before} lines already there"
        )
    errors = _ERRORS.findall(stderr)
    said_types: dict[str, int] = {}
    if errors:
        for item in errors[-1].split(", "):
            name, _, n = item.rpartition(" ")
            said_types[name] = int(n)
    types = Counter(r["error"]["type"] for r in appended if "error" in r)
    if said_types != dict(types):
        raise ChaosError(f"summary errors {said_types} but the run appended {dict(types)}")
    return f"lmlink batch: {_total} items: {counts}"


def run_chaos(
    workdir: Path, cfg: ChaosConfig, log: Callable[[str], None] = lambda _: None
) -> ChaosReport:
    """Run the whole scenario in ``workdir``; raises ChaosError when an invariant breaks."""
    rng = random.Random(cfg.seed)
    report = ChaosReport(cfg)
    rows = [{"id": f"c{i:05d}", "prompt": f"item {i}"} for i in range(cfg.items)]
    ids = {r["id"] for r in rows}
    src = workdir / "input.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = workdir / "output.jsonl"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    faults = Faults(
        seed=cfg.seed,
        p_503=cfg.p_503,
        retry_after=0.05,
        p_cut=cfg.p_cut,
        p_stall=cfg.p_stall,
        p_malformed=cfg.p_malformed,
    )
    restart_runs = set(rng.sample(range(cfg.kills), min(cfg.restarts, cfg.kills)))
    started = time.monotonic()
    server = FakeServer(responder=_answer, faults=faults, keep_requests=100)
    server.start()
    try:
        args = [
            *_command(),
            "batch",
            str(src),
            "-o",
            str(out),
            "-e",
            server.url,
            "-m",
            "fake-model",
            "-c",
            str(cfg.concurrency),
            "--timeout",
            str(cfg.idle_timeout),
            "--progress",
            "off",
        ]
        attempts = 0
        while report.kills < cfg.kills and attempts < cfg.kills * 3:  # bounded
            attempts += 1
            number = len(report.runs) + 1
            before, torn_before = read_output(out, ids)
            if len(before) == cfg.items:
                break  # everything is done: nothing left to kill
            restart = (number - 1) in restart_runs and report.restarts < cfg.restarts
            err_path = logs / f"run{number:03d}.stderr"
            run_started = time.monotonic()
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    args, stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=workdir
                )
                try:
                    if restart:
                        time.sleep(rng.uniform(*cfg.kill_after))
                        server.stop()
                        down = cfg.down_for[report.restarts % len(cfg.down_for)]
                        time.sleep(rng.uniform(*down))
                        server.start()
                        report.restarts += 1
                        # Give the run a little while on the restarted server, then kill it.
                    time.sleep(rng.uniform(*cfg.kill_after))
                    killed = proc.poll() is None
                    if killed:
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                except BaseException:
                    proc.kill()
                    proc.wait(timeout=60)
                    raise
            stderr = err_path.read_text(encoding="utf-8", errors="replace")
            after, torn_after = read_output(out, ids)
            if torn_before:
                if "ended in a torn line" not in stderr:
                    raise ChaosError(f"run {number} did not report the torn line it found")
                report.torn_lines_repaired += 1
            if torn_after and not killed:
                raise ChaosError(f"run {number} ended by itself but left a torn line")
            if after[: len(before)] != before:
                raise ChaosError(f"run {number} changed lines that were already written")
            record = RunRecord(
                number,
                killed,
                proc.returncode,
                len(before),
                len(after),
                torn_after,
                restart,
                time.monotonic() - run_started,
            )
            if not killed:
                if proc.returncode not in (0, 1, 3) or "Traceback" in stderr:
                    raise ChaosError(f"run {number} crashed (exit {proc.returncode}):\n{stderr}")
                record.summary = check_summary(stderr, len(before), after[len(before) :])
                report.summaries_checked += 1
            report.runs.append(record)
            log(
                f"run {number}: {'SIGKILL' if killed else f'exit {proc.returncode}'}, "
                f"{len(before)} -> {len(after)} lines{' (torn)' if torn_after else ''}"
                f"{', server restarted' if restart else ''}"
            )

        # The last run, to the end.
        number = len(report.runs) + 1
        before, torn_before = read_output(out, ids)
        run_started = time.monotonic()
        final = subprocess.run(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=workdir,
            timeout=cfg.final_timeout,
            check=False,
        )
        after, torn_after = read_output(out, ids)
        if torn_before:
            report.torn_lines_repaired += 1
        if final.returncode not in (0, 3):  # 3: finished, some ids with error lines
            raise ChaosError(f"the final run exited {final.returncode}:\n{final.stderr}")
        if torn_after or not out.read_bytes().endswith(b"\n"):
            raise ChaosError("the final file ends in a torn line")
        record = RunRecord(
            number,
            False,
            final.returncode,
            len(before),
            len(after),
            torn_after,
            False,
            time.monotonic() - run_started,
            check_summary(final.stderr, len(before), after[len(before) :]),
        )
        report.summaries_checked += 1
        report.runs.append(record)
        log(f"run {number} (final): exit {final.returncode}, {len(before)} -> {len(after)} lines")
        if {r["id"] for r in after} != ids or len(after) != cfg.items:
            raise ChaosError(f"the final file has {len(after)} lines for {cfg.items} ids")
        report.final_ok = sum("content" in r for r in after)
        report.final_failed = cfg.items - report.final_ok
        report.errors_by_type = dict(Counter(r["error"]["type"] for r in after if "error" in r))
        report.faults = dict(server.stats.faults)
    finally:
        server.stop()
    report.elapsed_s = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args(argv)
    cfg = ChaosConfig(
        items=args.items,
        kills=args.kills,
        restarts=args.restarts,
        seed=args.seed,
        concurrency=args.concurrency,
    )
    with tempfile.TemporaryDirectory(prefix="lmlink-chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = run_chaos(workdir, cfg, log=lambda line: print(line, flush=True))
        except ChaosError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            return 1
    print()
    print(report.table())
    if report.kills < cfg.kills or report.restarts < cfg.restarts:
        print(
            f"FAIL: only {report.kills} kills and {report.restarts} restarts happened "
            "(the runs finished too fast: use more items)",
            file=sys.stderr,
        )
        return 1
    print("\nPASS: every id exactly once, every line valid JSON, every summary matches its lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())

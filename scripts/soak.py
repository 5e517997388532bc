#!/usr/bin/env python3
"""Soak run: many chat calls through ONE ``lmlink.AsyncClient`` against a faulty fake server.

    .venv/bin/python scripts/soak.py --requests 200000

The fake server (``lmlink.testing.FakeServer``) runs in a child process, so the figures
below are the client's alone, and injects random faults into its answers (defaults: 5% 503
with ``Retry-After``, 2% connections cut in mid-stream or before the body, 1% stalls past
the client's idle timeout, 1% malformed chunks or bodies). Calls are a mix of plain
``chat``, ``chat_stream`` and streams left early, ``--concurrency`` (64) in flight at once.

What is checked (exit 1 when any fails):

- every call returns a response or raises an ``lmlink.LMLinkError``; any other exception,
  and any call still running after ``--call-guard`` seconds, is counted as a failure;
- every answer is the one its request asked for (the server echoes a request number);
- the whole run ends within ``--hard-timeout`` seconds;
- RSS (``VmRSS`` of /proc/self/status) and open file descriptors (/proc/self/fd) stay flat
  after warm-up, the descriptors go back to where they started once the client is closed,
  and no ``ResourceWarning`` (an unclosed socket) was emitted.

It prints a table: calls per outcome, requests/s, the RSS and fd samples. The CI test
``tests/test_reliability_soak.py`` runs the same code with 5,000 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import lmlink

__all__ = ["Sample", "SoakConfig", "SoakReport", "run_soak", "serve"]

FILLER = "lorem ipsum dolor sit amet " * 3


@dataclass(frozen=True)
class SoakConfig:
    """One soak run's settings; the fault rates are fractions of chat requests."""

    requests: int = 5000
    concurrency: int = 64
    seed: int = 20260601
    p_503: float = 0.05
    p_cut: float = 0.02
    p_stall: float = 0.01
    p_malformed: float = 0.01
    retry_after: float = 0.02
    idle: float = 0.5
    call_guard: float = 30.0
    hard_timeout: float = 600.0
    samples: int = 20
    warmup: float = 0.25  # the fraction of the run after which RSS and fds must stay flat

    def faults(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "p_503": self.p_503,
            "retry_after": self.retry_after,
            "p_cut": self.p_cut,
            "p_stall": self.p_stall,
            "p_malformed": self.p_malformed,
        }


@dataclass(frozen=True)
class Sample:
    """RSS and open fds after ``done`` calls finished."""

    done: int
    rss_kib: int
    fds: int
    elapsed_s: float


@dataclass
class SoakReport:
    """What a soak run measured; :meth:`problems` lists what broke the rules."""

    config: SoakConfig
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    fds_before: int = 0
    fds_after: int = 0
    resource_warnings: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    server: dict[str, Any] = field(default_factory=dict)
    client: str = "one AsyncClient"

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def after_warmup(self) -> list[Sample]:
        start = self.config.requests * self.config.warmup
        return [s for s in self.samples if s.done >= start]

    def rss_growth_kib(self) -> int:
        """RSS growth from the first sample after warm-up to the last one."""
        flat = self.after_warmup()
        return flat[-1].rss_kib - flat[0].rss_kib if len(flat) >= 2 else 0

    def fd_spread(self) -> int:
        """How far the open fds wandered after warm-up (max - min)."""
        flat = self.after_warmup()
        return max(s.fds for s in flat) - min(s.fds for s in flat) if flat else 0

    def problems(self, rss_budget_kib: int | None = None) -> list[str]:
        """What went wrong; empty when the run passed."""
        cfg = self.config
        out: list[str] = []
        if self.timed_out:
            out.append(f"the run did not finish within {cfg.hard_timeout:g} s (hang)")
        if self.calls != cfg.requests:
            out.append(f"{self.calls} calls finished out of {cfg.requests}")
        bad = {
            k: v for k, v in self.outcomes.items() if k.startswith(("UNEXPECTED", "HANG", "WRONG"))
        }
        if bad:
            out.append(f"calls that broke the contract: {bad}")
        budget = rss_budget_kib if rss_budget_kib is not None else _rss_budget(cfg)
        if self.rss_growth_kib() > budget:
            out.append(f"RSS grew {self.rss_growth_kib()} KiB after warm-up (budget {budget})")
        # The pool holds at most `concurrency` sockets; a leak grows without bound.
        if self.fd_spread() > cfg.concurrency + 8:
            out.append(f"open fds wandered by {self.fd_spread()} after warm-up")
        if self.fds_after > self.fds_before + 2:
            out.append(f"{self.fds_after - self.fds_before} fds still open after aclose()")
        if self.resource_warnings:
            out.append(f"{self.resource_warnings} ResourceWarnings (unclosed sockets)")
        return out

    def table(self) -> str:
        """The summary, for people."""
        cfg = self.config
        lines = [
            f"soak: {self.calls} calls in {self.elapsed_s:.1f} s = {self.rate:,.0f} requests/s "
            f"through {self.client}, {cfg.concurrency} in flight, idle timeout {cfg.idle:g} s, "
            f"seed {cfg.seed}",
            "",
            f"{'outcome':<44} {'calls':>8} {'share':>7}",
        ]
        for name, count in sorted(self.outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{name:<44} {count:>8} {100 * count / max(self.calls, 1):>6.2f}%")
        faults = self.server.get("faults", {})
        lines += [
            "",
            f"server: {self.server.get('chat_requests', '?')} chat requests, faults injected "
            f"{dict(sorted(faults.items()))}, client disconnects "
            f"{self.server.get('client_disconnects', '?')}",
            "",
            f"{'after calls':>12} {'elapsed s':>10} {'RSS MiB':>9} {'open fds':>9}",
        ]
        for s in self.samples:
            lines.append(f"{s.done:>12} {s.elapsed_s:>10.1f} {s.rss_kib / 1024:>9.1f} {s.fds:>9}")
        lines += [
            "",
            f"RSS growth after warm-up ({cfg.warmup:.0%}): {self.rss_growth_kib()} KiB; "
            f"fd spread after warm-up: {self.fd_spread()}; fds before {self.fds_before}, "
            f"after aclose {self.fds_after}; ResourceWarnings {self.resource_warnings}",
        ]
        for text in self.unexpected[:5]:
            lines += ["", text]
        return "\n".join(lines)


def _rss_budget(cfg: SoakConfig) -> int:
    # Allocator noise is a few MiB whatever the length; a leak of even 100 bytes a call
    # shows up as 20 MiB over 200,000 calls.
    return 8 * 1024 + cfg.requests // 20


def rss_kib() -> int:
    """This process's resident set, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


# -- the server, in a child process ---------------------------------------------------------


def serve(faults: dict[str, Any]) -> None:
    """Run the fake server until stdin closes; print its URL first and its stats last."""
    from lmlink.testing import FakeServer, Faults, RecordedRequest, Reply

    def answer(request: RecordedRequest) -> Reply:
        prompt = request.json["messages"][-1]["content"]
        return Reply(content=f"reply to {prompt}: {FILLER}", usage=(5, 20))

    server = FakeServer(responder=answer, faults=Faults(**faults), keep_requests=0)
    server.start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        stats = server.stats
        server.stop()
        summary = {
            "chat_requests": stats.chat_requests,
            "faults": stats.faults,
            "client_disconnects": stats.client_disconnects,
            "server_errors": stats.server_errors,
        }
        print(orjson.dumps(summary).decode(), flush=True)


class ServerProcess:
    """The fake server in a child process (this script with ``--serve``)."""

    def __init__(self, cfg: SoakConfig) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", orjson.dumps(cfg.faults())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"the fake server did not start: {self.url!r}")

    def finish(self) -> dict[str, Any]:
        """Stop the server; its stats."""
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            return {}
        last = out.strip().splitlines()[-1:] or ["{}"]
        result: dict[str, Any] = orjson.loads(last[0])
        return result


# -- the client side ------------------------------------------------------------------------


class _Soak:
    def __init__(
        self, cfg: SoakConfig, report: SoakReport, client: lmlink.AsyncClient | lmlink.Client
    ) -> None:
        self.cfg = cfg
        self.report = report
        self.client = client
        self.next = 0
        self.done = 0
        self.started = time.monotonic()
        step = max(cfg.requests // cfg.samples, 1)
        self.marks = {min(step * k, cfg.requests) for k in range(1, cfg.samples + 1)}

    @staticmethod
    def pick(rng: random.Random) -> str:
        return rng.choices(("chat", "chat_stream", "leave_early"), (45, 45, 10))[0]

    def error_outcome(self, exc: BaseException, n: int, kind: str) -> str:
        if isinstance(exc, lmlink.LMLinkError):
            outcome = type(exc).__name__
            if isinstance(exc, lmlink.APITimeoutError):
                outcome += f"({exc.phase})"
            return outcome
        if len(self.report.unexpected) < 20:
            text = "".join(traceback.format_exception(exc))
            self.report.unexpected.append(f"request {n} ({kind}):\n{text}")
        return f"UNEXPECTED {type(exc).__name__}"

    def record(self, outcome: str) -> None:
        self.report.outcomes[outcome] += 1
        self.done += 1
        if self.done in self.marks:
            self.report.samples.append(
                Sample(self.done, rss_kib(), open_fds(), time.monotonic() - self.started)
            )

    async def worker(self, rng: random.Random) -> None:
        cfg = self.cfg
        while self.next < cfg.requests:  # bounded: each turn takes one request number
            n = self.next
            self.next += 1
            kind = self.pick(rng)
            try:
                outcome = await asyncio.wait_for(self.call(n, kind), cfg.call_guard)
            except asyncio.TimeoutError:
                outcome = f"HANG: {kind} still running after {cfg.call_guard:g} s"
            except Exception as exc:
                outcome = self.error_outcome(exc, n, kind)
            self.record(outcome)

    def sync_worker(self, rng: random.Random, lock: threading.Lock) -> None:
        cfg = self.cfg
        while True:  # bounded: each turn takes one request number, up to cfg.requests
            with lock:
                n = self.next
                if n >= cfg.requests:
                    return
                self.next += 1
            kind = self.pick(rng)
            try:
                outcome = self.sync_call(n, kind)
            except Exception as exc:
                outcome = self.error_outcome(exc, n, kind)
            with lock:
                self.record(outcome)

    async def call(self, n: int, kind: str) -> str:
        client = self.client
        assert isinstance(client, lmlink.AsyncClient)
        prompt = f"request #{n}"
        expected = f"reply to {prompt}: {FILLER}"
        if kind == "chat":
            resp = await client.chat(prompt)
            return "ok: chat" if resp.content == expected else "WRONG ANSWER (chat)"
        if kind == "chat_stream":
            resp = await client.chat_stream(prompt)
            return "ok: chat_stream" if resp.content == expected else "WRONG ANSWER (stream)"
        async with client.stream(prompt) as stream:
            async for delta in stream:
                if not expected.startswith(delta):
                    return "WRONG ANSWER (left early)"
                break
        return "ok: stream left after the first delta"

    def sync_call(self, n: int, kind: str) -> str:
        client = self.client
        assert isinstance(client, lmlink.Client)
        prompt = f"request #{n}"
        expected = f"reply to {prompt}: {FILLER}"
        if kind == "chat":
            resp = client.chat(prompt)
            return "ok: chat" if resp.content == expected else "WRONG ANSWER (chat)"
        if kind == "chat_stream":
            resp = client.chat_stream(prompt)
            return "ok: chat_stream" if resp.content == expected else "WRONG ANSWER (stream)"
        with client.stream(prompt) as stream:
            for delta in stream:
                if not expected.startswith(delta):
                    return "WRONG ANSWER (left early)"
                break
        return "ok: stream left after the first delta"


def _retry_policy() -> lmlink.RetryPolicy:
    # Real waits, but short ones: the server's Retry-After (20 ms) is honoured.
    return lmlink.RetryPolicy(
        max_retries=4, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.05
    )


async def _soak(cfg: SoakConfig, url: str, report: SoakReport) -> None:
    client = lmlink.AsyncClient(
        endpoint=url,
        model="fake-model",
        timeout=lmlink.Timeout(connect=5, idle=cfg.idle),
        retry=_retry_policy(),
        max_connections=cfg.concurrency,
    )
    soak = _Soak(cfg, report, client)
    rng = random.Random(cfg.seed)
    try:
        workers = [soak.worker(random.Random(rng.random())) for _ in range(cfg.concurrency)]
        await asyncio.gather(*workers)
    finally:
        await client.aclose()
    # Let the transports the pool aborted run connection_lost before counting fds.
    for _ in range(10):
        await asyncio.sleep(0.01)


def _sync_soak(cfg: SoakConfig, url: str, report: SoakReport) -> None:
    """The same calls through one blocking ``lmlink.Client`` shared by ``concurrency``
    threads (daemon threads: one that hangs cannot hold the run past its hard timeout)."""
    client = lmlink.Client(
        endpoint=url,
        model="fake-model",
        timeout=lmlink.Timeout(connect=5, idle=cfg.idle),
        retry=_retry_policy(),
        max_connections=cfg.concurrency,
    )
    soak = _Soak(cfg, report, client)
    lock = threading.Lock()
    rng = random.Random(cfg.seed)
    threads = [
        threading.Thread(target=soak.sync_worker, args=(random.Random(rng.random()), lock))
        for _ in range(cfg.concurrency)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    deadline = time.monotonic() + cfg.hard_timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    if any(t.is_alive() for t in threads):
        report.timed_out = True
        return
    client.close()


def run_soak(cfg: SoakConfig, *, sync: bool = False) -> SoakReport:
    """Run one soak in this process (the server in a child); return what it measured.
    ``sync`` drives a blocking ``lmlink.Client`` from threads instead of the AsyncClient."""
    report = SoakReport(cfg, client="one Client shared by threads" if sync else "one AsyncClient")
    seen: list[warnings.WarningMessage] = []
    server = ServerProcess(cfg)
    try:
        report.fds_before = open_fds()
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            if sync:
                _sync_soak(cfg, server.url, report)
            else:
                try:
                    coro = _soak(cfg, server.url, report)
                    asyncio.run(asyncio.wait_for(coro, cfg.hard_timeout))
                except asyncio.TimeoutError:
                    report.timed_out = True
        report.elapsed_s = time.monotonic() - started
        report.fds_after = open_fds()
    finally:
        report.server = server.finish()
    report.resource_warnings = sum(issubclass(w.category, ResourceWarning) for w in seen)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=SoakConfig.seed)
    parser.add_argument("--idle", type=float, default=0.5, help="client idle timeout, s")
    parser.add_argument("--p-503", type=float, default=0.05)
    parser.add_argument("--p-cut", type=float, default=0.02)
    parser.add_argument("--p-stall", type=float, default=0.01)
    parser.add_argument("--p-malformed", type=float, default=0.01)
    parser.add_argument("--call-guard", type=float, default=30.0)
    parser.add_argument(
        "--hard-timeout", type=float, default=None, help="default: 60 s + 5 ms/call"
    )
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument(
        "--sync", action="store_true", help="one blocking Client shared by threads instead"
    )
    parser.add_argument("--serve", metavar="FAULTS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(orjson.loads(args.serve))
        return 0
    cfg = SoakConfig(
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        idle=args.idle,
        p_503=args.p_503,
        p_cut=args.p_cut,
        p_stall=args.p_stall,
        p_malformed=args.p_malformed,
        call_guard=args.call_guard,
        hard_timeout=args.hard_timeout or 60 + args.requests * 0.005,
        samples=args.samples,
    )
    report = run_soak(cfg, sync=args.sync)
    print(report.table())
    problems = report.problems()
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("\nPASS: every call ended in a response or an lmlink.LMLinkError; RSS and fds flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

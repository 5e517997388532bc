"""What observing calls costs a chat: no hooks, event hooks, OpenTelemetry, side by side.

    .venv/bin/python benchmarks/observe.py            # about 30 s
    .venv/bin/python benchmarks/observe.py --json     # the numbers as JSON

One blocking client sends plain chats, one after another, to a fake server in the same
process, in four modes: ``plain`` (nothing observing: the hot path that must not slow
down), ``hooks`` (a request and a response hook that do nothing), ``otel`` (lmlink.otel
with an SDK tracer provider and no exporter, the global no-op meter) and ``otel+metrics``
(an SDK meter provider too). The modes take turns, round after round, so a busy machine
weighs on all of them alike. Counted: the client thread's CPU time per call
(``time.thread_time``), which leaves out the server thread and the waits; reported: the
median over the rounds, and its ratio to ``plain``.
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

import lmlink
import lmlink.otel
from lmlink.testing import FakeServer

MODES = ("plain", "hooks", "otel", "otel+metrics")


def _nothing(_: Any) -> None:
    return None


def _round(client: lmlink.Client, mode: str, calls: int) -> float:
    """Client-thread CPU microseconds per call over ``calls`` chats in ``mode``."""
    if mode.startswith("otel"):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        meters = MeterProvider() if mode == "otel+metrics" else None
        lmlink.otel.instrument(tracer_provider=TracerProvider(), meter_provider=meters)
    try:
        started = time.thread_time()
        for _ in range(calls):
            client.chat("hi")
        return (time.thread_time() - started) / calls * 1e6
    finally:
        lmlink.otel.uninstrument()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hooks = {"request": [_nothing], "response": [_nothing]}
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with FakeServer() as server:
        plain = lmlink.Client(endpoint=server.url, model="fake-model")
        hooked = lmlink.Client(endpoint=server.url, model="fake-model", event_hooks=hooks)
        for client in (plain, hooked):
            for _ in range(200):  # warm: connections pooled, code paths loaded
                client.chat("hi")
        for _ in range(args.rounds):
            for mode in MODES:
                samples[mode].append(_round(hooked if mode == "hooks" else plain, mode, args.calls))
        plain.close()
        hooked.close()
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    base = medians["plain"]
    if args.json:
        print(json.dumps({m: {"us_per_call": v, "ratio": v / base} for m, v in medians.items()}))
        return 0
    print("| mode | client CPU µs per chat (median) | ratio to plain |")
    print("| --- | ---: | ---: |")
    for mode, value in medians.items():
        print(f"| {mode} | {value:.1f} | {value / base:.2f} x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

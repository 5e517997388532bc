"""Soak, short: thousands of calls through one client against a fake server that answers
with random 503s (Retry-After), cut connections, stalls past the idle timeout and malformed
chunks. Every call must end in a response or a typed ``lmlink.LMLinkError``, in time, with
the client's RSS and open file descriptors flat.

This runs the code of ``scripts/soak.py`` (the long run: ``--requests 200000``), loaded
from its file; the server is a ``lmlink.testing.FakeServer`` in a child process, so the
memory and fd figures are the client's alone.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmlink_soak", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak: Any = _load()

FAULTS = {"503", "cut", "stall", "malformed"}


def _check(report: Any, *, every_kind: bool) -> None:
    print("\n" + report.table())
    assert report.problems() == []
    assert set(report.server["faults"]) == FAULTS
    outcomes = report.outcomes
    assert sum(v for k, v in outcomes.items() if k.startswith("ok")) > 0.9 * report.calls
    if every_kind:
        # Each kind of fault surfaced as its typed error (tens of each are expected at 5,000
        # calls): the run was not all easy.
        assert "APITimeoutError(idle)" in outcomes  # a plain call stalled
        assert "StreamAPITimeoutError(idle)" in outcomes  # a stream stalled
        assert "DecodeError" in outcomes  # a plain body was malformed
        assert "StreamAPIConnectionError" in outcomes  # a stream was cut after text


def test_soak_async_client_64_in_flight() -> None:
    """5,000 mixed calls, 64 in flight on one AsyncClient: only responses or LMLinkError,
    right answers, no hang, RSS and fds flat, fds back to the start after aclose()."""
    cfg = soak.SoakConfig(requests=5000, concurrency=64, hard_timeout=60.0, samples=20)
    _check(soak.run_soak(cfg), every_kind=True)


def test_soak_sync_client_shared_by_threads() -> None:
    """2,000 mixed calls through one blocking Client shared by 16 threads: the same rules."""
    cfg = soak.SoakConfig(requests=2000, concurrency=16, hard_timeout=60.0, samples=10)
    _check(soak.run_soak(cfg, sync=True), every_kind=False)

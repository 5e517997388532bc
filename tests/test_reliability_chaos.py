"""Chaos, short: ``lmlink batch`` SIGKILLed at random moments while a faulty fake server
answers and is stopped and started again on the same port under a running batch, then run
to the end. Every id must end up exactly once, every line valid JSON, and every summary a
run printed must match the lines it appended.

This runs the code of ``scripts/chaos.py`` (the long run: 2,000 items, 20 kills, 2
restarts), loaded from its file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chaos.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmlink_chaos", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos: Any = _load()


def test_batch_survives_kills_and_server_restarts(tmp_path: Path) -> None:
    """300 items, 5 SIGKILLs, the server down 5-6 s under a run, faults on: each id exactly
    once, no torn line, every printed summary's counts equal the lines its run wrote."""
    cfg = chaos.ChaosConfig(items=300, kills=5, restarts=1, seed=20260603, down_for=((5.0, 6.0),))
    report = chaos.run_chaos(tmp_path, cfg)
    print("\n" + report.table())
    assert report.kills == 5
    assert report.restarts == 1
    # The outage outlasted the runner's retries: that run stopped by itself (exit 1).
    assert any(not r.killed and r.returncode == 1 for r in report.runs)
    assert report.summaries_checked >= 2
    assert report.final_ok + report.final_failed == 300
    assert sum(report.faults.values()) > 0
    # The kills landed mid-run: the output grew across them, not all in one go.
    grown = [r.lines_after for r in report.runs if r.killed]
    assert 0 < grown[-1] < 300
    assert len(set(grown)) >= 3


def test_summary_check_catches_a_lie() -> None:
    """The summary check itself fails when the printed counts differ from the file."""
    stderr = "lmlink batch: 3 items: 2 ok, 0 failed, 1 already done\n"
    appended = [{"id": "a", "content": "x"}, {"id": "b", "error": {"type": "DecodeError"}}]
    with pytest.raises(chaos.ChaosError, match="does not match"):
        chaos.check_summary(stderr, 1, appended)

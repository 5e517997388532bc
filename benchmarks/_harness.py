"""Process plumbing shared by the benchmark scripts: the fake server's lifetime, CPU pinning,
and running one measurement subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable


def cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def split_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): one core for the server and the rest for the clients,
    so that the two never compete for a core; (None, None) with fewer than 2 or no pinning."""
    mine = cpus()
    if not pin or len(mine) < 2:
        return None, None
    return {mine[0]}, set(mine[1:])


def pin_to(pid: int, cpu_set: set[int] | None) -> None:
    if cpu_set:
        os.sched_setaffinity(pid, cpu_set)


def child_env() -> dict[str, str]:
    """The environment of measured subprocesses: no settings of the user's that would change
    a client's behaviour (proxies, endpoints, keys), bytecode caches allowed."""
    env = {k: v for k, v in os.environ.items() if not _dropped(k)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["LMLINK_NO_DISCOVERY"] = "1"
    return env


def _dropped(name: str) -> bool:
    upper = name.upper()
    return (
        upper.endswith("_PROXY")
        or upper.startswith(("LMLINK_", "OPENAI_"))
        or upper in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME", "PYTHONASYNCIODEBUG")
    )


@contextlib.contextmanager
def running_server(
    *, workers: int = 1, cpu_set: set[int] | None = None, max_seconds: float = 3600.0
) -> Iterator[tuple[int, int]]:
    """Start ``server.py`` in its own process group; yield ``(port, pid)``; stop it."""
    proc = subprocess.Popen(
        [
            PYTHON,
            str(HERE / "server.py"),
            "--workers",
            str(workers),
            "--max-seconds",
            str(max_seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,
    )
    try:
        pin_to(proc.pid, cpu_set)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the fake server did not start (said {line!r})")
        port = int(line)
        if cpu_set and workers > 1:
            for child in _children(proc.pid):
                pin_to(child, cpu_set)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def run_json(
    args: list[str], *, cpu_set: set[int] | None, timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run ``python ARGS`` (pinned); return (its last stdout line as JSON, or None on
    failure, and its stderr tail)."""
    proc = subprocess.Popen(
        [PYTHON, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    pin_to(proc.pid, cpu_set)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, f"timed out after {timeout:g} s\n{err[-2000:]}"
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None, err[-2000:] or f"exit status {proc.returncode}"
    return json.loads(lines[-1]), err[-2000:]

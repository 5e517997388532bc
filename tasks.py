#!/usr/bin/env python3
"""The project's one task runner, used the same way on a laptop and in CI.

    python3 tasks.py demo    # lmlink's main job, against your server or the bundled test server
    python3 tasks.py test    # ruff, mypy --strict, the whole test suite (real llama.cpp too)
    python3 tasks.py bench   # the benchmarks, side by side with the other clients
    python3 tasks.py soak    # 200,000 calls through one client against a faulty server
    python3 tasks.py chaos   # a 2,000-item batch killed 20 times, its server restarted twice
    python3 tasks.py fuzz    # the decoders and the whole client under atheris (10 min)

Arguments after the task go to its script (``python3 tasks.py soak --requests 5000``).

Each task makes its own virtualenv in .venv (only Python 3.10+ is needed) and installs what
it needs; a stamp file skips the install when nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def run(*cmd: str | Path, check: bool = True, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)
    if check and code != 0:
        sys.exit(code)
    return code


def ensure_venv(*groups: str, extras: str = "") -> None:
    """Create .venv and install lmlink (editable) with the given dependency groups."""
    if not PY.exists():
        print(f"creating virtualenv in {VENV.name}/", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + ",".join(groups).encode() + extras.encode()
    ).hexdigest()
    stamp = VENV / f".stamp-{'-'.join([*groups, *extras.split(',')]).strip('-') or 'base'}"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(*pip, "--upgrade", "pip>=25.1")  # dependency groups need pip 25.1
    args: list[str | Path] = [*pip, "-e", f".[{extras}]" if extras else "."]
    for group in groups:
        args += ["--group", group]
    run(*args)
    stamp.write_text(wanted)


def demo(args: list[str]) -> int:
    ensure_venv(extras="progress")
    return run(BIN / "lmlink", "demo", *args, check=False)


def test(args: list[str]) -> int:
    ensure_venv("test", "lint")
    run(PY, "scripts/install_engine.py")
    run(BIN / "ruff", "check", "src", "tests", "benchmarks", "scripts", "tasks.py")
    run(BIN / "ruff", "format", "--check", "src", "tests", "benchmarks", "scripts", "tasks.py")
    run(BIN / "mypy")
    code = run(PY, "-m", "pytest", *args, check=False)
    if code == 5:
        print("pytest collected no tests: that is a failure", file=sys.stderr)
        return 1
    return code


def bench(args: list[str]) -> int:
    ensure_venv("bench")
    return run(PY, "benchmarks/run.py", *args, check=False)


def soak(args: list[str]) -> int:
    ensure_venv()
    return run(PY, "scripts/soak.py", *args, check=False)


def chaos(args: list[str]) -> int:
    ensure_venv()
    return run(PY, "scripts/chaos.py", *args, check=False)


def fuzz(args: list[str]) -> int:
    ensure_venv("test", "fuzz")  # hypothesis for the targets; atheris where it has a wheel
    return run(PY, "scripts/fuzz.py", *args, check=False)


TASKS = {
    "demo": demo,
    "test": test,
    "bench": bench,
    "soak": soak,
    "chaos": chaos,
    "fuzz": fuzz,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__, file=sys.stderr)
        return 2
    return TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Install the real engine the integration suite runs: llama-cpp-python with its server.

    .venv/bin/python scripts/install_engine.py

llama-cpp-python builds llama.cpp from source (about 10 minutes on 2 cores), so the wheel is
built once into a cache folder (``~/.cache/lmlink/wheels``, or ``LMLINK_WHEEL_DIR``) and
installed from there on every later run. Idempotent: does nothing when it is already
installed at the pinned version. Run it with the interpreter of the environment to install
into.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"


def installed() -> bool:
    try:
        if importlib.metadata.version(PACKAGE) != VERSION:
            return False
        importlib.metadata.version("uvicorn")  # the server extra
        importlib.metadata.version("sse-starlette")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def wheel_dir() -> Path:
    default = Path.home() / ".cache" / "lmlink" / "wheels"
    return Path(os.environ.get("LMLINK_WHEEL_DIR", default))


def cached_wheel(folder: Path) -> Path | None:
    name = PACKAGE.replace("-", "_")
    found = sorted(folder.glob(f"{name}-{VERSION}-*.whl"))
    return found[-1] if found else None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    if installed():
        print(f"{PACKAGE} {VERSION} is installed")
        return 0
    folder = wheel_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if cached_wheel(folder) is None:
        print(
            f"building {PACKAGE} {VERSION} once into {folder} "
            "(it compiles llama.cpp: about 10 minutes on 2 cores)",
            flush=True,
        )
        started = time.monotonic()
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel",
               "--no-deps", "-w", str(folder), f"{PACKAGE}=={VERSION}"]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
        print(f"built in {time.monotonic() - started:.0f} s", flush=True)
    pip("install", "-q", "--find-links", str(folder), f"{PACKAGE}[server]=={VERSION}")
    if not installed():
        print(f"{PACKAGE} {VERSION} did not install", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"install_engine: {exc}", file=sys.stderr)
        sys.exit(exc.returncode or 1)

#!/usr/bin/env python3
"""Install the real engine the integration suite runs: llama-cpp-python with its server.

    .venv/bin/python scripts/install_engine.py

Run it with the interpreter of the environment to install into. It:

1. does nothing when ``llama_cpp`` and ``llama_cpp.server`` already import at the pinned
   version (and ``gguf``/``numpy``, which the suite's model generator needs, are there);
2. otherwise installs ``llama-cpp-python[server]`` from a wheel cached in
   ``~/.cache/lmlink/wheels`` (or ``$LMLINK_WHEEL_DIR``), its other dependencies from the
   package index;
3. and when no wheel for this platform is cached, builds one there first. That compiles
   llama.cpp (about 10 minutes on 2 cores) once per machine; a build already running (from
   another run of this script, or a ``pip wheel`` started by hand) is waited for instead of
   started again.

Standard library only. Exits non-zero with a message saying what went wrong.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
WHEEL_NAME = PACKAGE.replace("-", "_")
MODEL_DEPS = ("gguf>=0.10", "numpy>=1.26")  # for tests/integration/make_model.py
BUILD_WAIT_S = 60 * 60  # the longest we wait for somebody else's build
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

# Imports the engine and its server (the extra's packages), and checks the version.
ENGINE_CHECK = f"""
import importlib.metadata, llama_cpp, llama_cpp.server.app
assert importlib.metadata.version({PACKAGE!r}) == {VERSION!r}, llama_cpp.__version__
"""
MODEL_CHECK = "import gguf, numpy"


class InstallError(Exception):
    """Something the user has to fix; the message says what."""


def say(text: str) -> None:
    print(f"install_engine: {text}", flush=True)


def importable(code: str) -> bool:
    """Whether ``code`` runs cleanly in a fresh interpreter (so nothing stale is cached)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    return result.returncode == 0


def wheel_dir() -> Path:
    configured = os.environ.get("LMLINK_WHEEL_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "lmlink" / "wheels"


def platform_ok(tag: str) -> bool:
    """Whether a wheel's platform tag fits this machine (OS and CPU architecture)."""
    if tag == "any":
        return True
    here = sysconfig.get_platform().replace("-", "_").replace(".", "_").lower()
    system = here.split("_", 1)[0]  # linux, macosx, win
    machine = platform.machine().lower()
    aliases = {"amd64": "x86_64", "x86_64": "amd64", "arm64": "aarch64", "aarch64": "arm64"}
    arch_ok = machine in tag or aliases.get(machine, machine) in tag
    os_ok = tag.startswith(system) or (system == "linux" and "linux" in tag)
    return arch_ok and os_ok


def python_ok(tag: str, abi: str) -> bool:
    """Whether a wheel's python and ABI tags fit this interpreter."""
    major, minor = sys.version_info[:2]
    pythons = set(tag.split("."))
    if not pythons & {"py3", f"py{major}{minor}", f"cp{major}{minor}"}:
        return False
    return abi in {"none", "abi3", f"cp{major}{minor}"}


def cached_wheel(folder: Path) -> Path | None:
    """The newest cached wheel of the pinned version that this interpreter can install."""
    found = []
    for path in folder.glob(f"{WHEEL_NAME}-{VERSION}-*.whl"):
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) < 5 or path.stat().st_size == 0:
            continue
        py, abi, plat = parts[-3:]
        if python_ok(py, abi) and any(platform_ok(p) for p in plat.split(".")):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def running_builds() -> list[str]:
    """Command lines of ``pip wheel`` processes building llama-cpp-python (not ours)."""
    lines: list[str] = []
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            lines.append(" ".join(a.decode(errors="replace") for a in argv if a))
    elif shutil.which("pgrep"):
        out = subprocess.run(
            ["pgrep", "-af", "pip"], capture_output=True, text=True, check=False
        ).stdout
        lines = [line.split(" ", 1)[-1] for line in out.splitlines()]
    builds = []
    for line in lines:
        words = line.split()
        if "wheel" in words and "pip" in line and "llama" in line.replace("_", "-"):
            builds.append(line)
    return builds


def wait_for_running_build() -> None:
    """Wait while another ``pip wheel`` of llama-cpp-python runs (it makes our wheel)."""
    builds = running_builds()
    if not builds:
        return
    say(f"a build of {PACKAGE} is already running; waiting for it:\n    {builds[0]}")
    started = time.monotonic()
    last_note = started
    while running_builds():
        now = time.monotonic()
        if now - started > BUILD_WAIT_S:
            raise InstallError(
                f"the other build has run for over {BUILD_WAIT_S // 60} minutes; "
                "stop it or let it finish, then run this again"
            )
        if now - last_note >= 60:
            say(f"still waiting ({(now - started) / 60:.0f} min)")
            last_note = now
        time.sleep(5)
    say(f"the other build ended after {time.monotonic() - started:.0f} s")


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the wheel folder, so two runs never build at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl, and no second build to race with in practice
        yield
        return
    with (folder / ".build.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say("another install_engine run is building; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_wheel(folder: Path) -> Path:
    """Build the wheel once into ``folder`` (atomically: a failed build leaves nothing)."""
    jobs = str(os.cpu_count() or 2)
    say(
        f"building {PACKAGE} {VERSION} once into {folder}: this compiles llama.cpp and "
        f"takes about 10 minutes on 2 cores ({jobs} parallel jobs); later runs reuse it"
    )
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=jobs)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        cmd = [*PIP, "wheel", "--no-deps", "-w", tmp, f"{PACKAGE}=={VERSION}"]
        say("+ " + " ".join(cmd))
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise InstallError(
                f"building {PACKAGE} failed (see pip's output above). It needs a C/C++ "
                "compiler and cmake, e.g. `apt-get install build-essential cmake` "
                "(or `pip install cmake`), and network access to the package index"
            )
        built = sorted(Path(tmp).glob(f"{WHEEL_NAME}-{VERSION}-*.whl"))
        if not built:
            raise InstallError(f"pip reported success but wrote no wheel into {tmp}")
        target = folder / built[0].name
        built[0].replace(target)
    say(f"built {target.name} in {time.monotonic() - started:.0f} s")
    return target


def ensure_wheel(folder: Path) -> Path:
    wheel = cached_wheel(folder)
    if wheel is not None:
        return wheel
    wait_for_running_build()
    with build_lock(folder):
        wheel = cached_wheel(folder)  # made by the build we waited for, or by another run
        if wheel is not None:
            return wheel
        return build_wheel(folder)


def run_pip(args: list[str], *, quiet: bool = False) -> bool:
    cmd = [*PIP, "install", "-q", *args]
    if not quiet:
        say("+ " + " ".join(cmd))
    return subprocess.run(cmd, capture_output=quiet, check=False).returncode == 0


def install_engine(wheel: Path) -> None:
    say(f"installing {wheel.name} with the server extra")
    spec = [
        "--find-links",
        str(wheel.parent),
        "--only-binary",  # never compile the sdist from the index here
        PACKAGE,
        f"{PACKAGE}[server]=={VERSION}",
    ]
    # Offline first: enough when the extra's dependencies are already installed.
    if run_pip(["--no-index", *spec], quiet=True) or run_pip(spec):
        return
    raise InstallError(
        "pip install failed (see its output above); the server extra's dependencies "
        "come from the package index, so the first install needs network access to it"
    )


def failure(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "?"


def main() -> int:
    if importable(ENGINE_CHECK + MODEL_CHECK):
        say(f"{PACKAGE} {VERSION} with its server is installed; nothing to do")
        return 0
    if not importable("import pip"):
        raise InstallError(f"{sys.executable} has no pip; make the environment with pip")
    if not importable(ENGINE_CHECK):
        folder = wheel_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InstallError(f"cannot create the wheel folder {folder}: {exc}") from exc
        install_engine(ensure_wheel(folder))
        if not importable(ENGINE_CHECK):
            raise InstallError(f"{PACKAGE} installed but does not import: {failure(ENGINE_CHECK)}")
    if not importable(MODEL_CHECK) and not run_pip(list(MODEL_DEPS)):
        raise InstallError("installing gguf and numpy failed (see pip's output above)")
    say(f"{PACKAGE} {VERSION} with its server is installed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InstallError as exc:
        print(f"install_engine: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

"""The server under test: llama-cpp-python serving the generated tiny model in a process the
suite owns, or a server of yours named by ``LMLINK_ENDPOINT`` (and ``LMLINK_MODEL``)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmlink

__all__ = ["HERE", "MODEL_ALIAS", "N_CTX", "Engine", "model_path"]

HERE = Path(__file__).resolve().parent
N_CTX = 256  # small, so a prompt overflows the context easily
MODEL_ALIAS = "tiny"
START_TIMEOUT_S = 120.0
INSTALL_HINT = (
    "llama-cpp-python with its server extra is not installed for this interpreter; run "
    f"`{sys.executable} scripts/install_engine.py` (`python3 tasks.py test` does it for "
    "you), or point LMLINK_ENDPOINT at a server of your own"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def model_path(fallback_dir: Path) -> Path:
    """The generated model, made once and cached by a hash of its generator.

    The cache is ``$LMLINK_CACHE/models`` (default ``~/.cache/lmlink/models``), or
    ``fallback_dir`` when that cannot be written.
    """
    script = HERE / "make_model.py"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("LMLINK_CACHE") or Path.home() / ".cache" / "lmlink")
    folder = cache / "models"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = fallback_dir
    path = folder / f"tiny-{digest}.gguf"
    if not path.exists():
        result = subprocess.run(
            [sys.executable, str(script), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"make_model.py failed:\n{result.stdout}{result.stderr}", pytrace=False)
    return path


def engine_importable() -> bool:
    """Whether llama-cpp-python and its server extra import here (checked in a child, so
    the import's side effects stay out of the test process)."""
    code = "import llama_cpp, llama_cpp.server.app"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    return result.returncode == 0


class Engine:
    """The server under test: its URL and model, and (when the suite owns it) its process.

    An owned engine can be killed (SIGKILL, as a crash) and started again on the same port.
    """

    def __init__(self, url: str, model: str, log: Path | None = None) -> None:
        self.url = url
        self.model = model
        self.log = log
        self.owned = log is not None
        self.cmd: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def external(cls, endpoint: str, model: str | None) -> Engine:
        """A server of the user's: its model is ``model`` or the first one it lists."""
        if not model:
            with lmlink.Client(endpoint=endpoint) as client:
                listed = client.models()
            if not listed:
                pytest.fail(f"{endpoint} lists no models; set LMLINK_MODEL", pytrace=False)
            model = listed[0].id
        return cls(endpoint, model)

    @classmethod
    def owned_server(cls, workdir: Path) -> Engine:
        """Start llama-cpp-python's server on the generated model, on a free port."""
        if not engine_importable():
            pytest.fail(INSTALL_HINT, pytrace=False)
        model = model_path(workdir)
        port = _free_port()
        engine = cls(f"http://127.0.0.1:{port}/v1", MODEL_ALIAS, workdir / "server.log")
        engine.cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(N_CTX),
            "--n_threads", "2",
            "--n_threads_batch", "2",
            "--seed", "7",
            # Queue requests instead of cutting the running stream short: then a stream
            # the client leaves early is stopped only because the client closed it.
            "--interrupt_requests", "False",
            "--verbose", "False",
        ]  # fmt: skip
        engine.start()
        return engine

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server process (on the same port every time) and wait until it is
        ready; fail the test with its log if it does not come up."""
        assert self.log is not None
        with self.log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            out.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")  # its prints reach the log at once
            self._proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``models()`` through lmlink until the server answers."""
        deadline = time.monotonic() + timeout
        with lmlink.Client(endpoint=self.url, model=self.model, max_retries=0, timeout=5) as c:
            while True:  # bounded by the deadline
                if not self.running:
                    self.stop()
                    pytest.fail(
                        f"the llama.cpp server exited while starting:\n{self.log_tail()}",
                        pytrace=False,
                    )
                try:
                    if any(m.id == self.model for m in c.models()):
                        return
                except (lmlink.APIConnectionError, lmlink.APIStatusError):
                    pass  # not listening yet, or still loading
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"the llama.cpp server was not ready after {timeout:.0f} s:\n"
                        f"{self.log_tail()}",
                        pytrace=False,
                    )
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=30)

    def stop(self) -> None:
        """Terminate the server; kill it if it does not exit within 15 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        if self.log is None:
            return "(an external server: no log)"
        return "\n".join(self.log_text().splitlines()[-lines:])

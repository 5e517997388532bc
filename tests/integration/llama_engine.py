"""The llama.cpp server under test: a process of the suite's own (llama-cpp-python serving a
generated tiny model), or a server of yours named by ``LMLINK_ENDPOINT``."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import lmlink

__all__ = ["HERE", "MODEL_ALIAS", "N_CTX", "Engine"]

HERE = Path(__file__).resolve().parent
N_CTX = 256
MODEL_ALIAS = "tiny"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _model_path() -> Path:
    """The generated model, cached under ~/.cache/lmlink by a hash of its generator."""
    digest = hashlib.sha256((HERE / "make_model.py").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("LMLINK_CACHE", Path.home() / ".cache" / "lmlink"))
    path = cache / "models" / f"tiny-{digest}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "make_model.py"), str(path)], check=True)
    return path


class Engine:
    """The server under test: its URL and model, and (when the suite owns it) its process."""

    def __init__(self, url: str, model: str, log: Path | None = None) -> None:
        self.url = url
        self.model = model
        self.log = log
        self.owned = log is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd: list[str] = []

    @classmethod
    def start_owned(cls, log: Path) -> Engine:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError:
            pytest.fail(
                "llama-cpp-python with its server extra is not installed: run "
                "`python scripts/install_engine.py` (python3 tasks.py test does it for you)",
                pytrace=False,
            )
        port = _free_port()
        engine = cls(f"http://127.0.0.1:{port}/v1", MODEL_ALIAS, log)
        engine._cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(_model_path()),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(N_CTX),
            "--n_threads", "2",
            "--seed", "7",
            "--verbose", "False",
        ]  # fmt: skip
        engine.start()
        return engine

    def start(self) -> None:
        """Start the server process and wait until it is ready."""
        assert self.log is not None
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120.0) -> None:
        with lmlink.Client(endpoint=self.url, model=self.model) as client:
            try:
                client.wait_ready(timeout)
            except lmlink.APITimeoutError:
                pytest.fail(f"the llama.cpp server did not start:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=30)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        if self.log is None or not self.log.exists():
            return "(no log: an external server)"
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

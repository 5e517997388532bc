"""A raw-socket HTTP server for tests that need bytes no real server would send: each
request is answered by a script that writes whatever it likes on the socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

__all__ = ["RawServer", "Script"]

Script = Callable[[int, socket.socket], None]  # (request number, connection) -> answer it


class RawServer:
    """Answers each request with ``script(n, sock)``, n counting requests across
    connections; counts the connections it accepted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        with sock:
            sock.settimeout(10)
            try:
                while not self.closing.is_set():
                    while b"\r\n\r\n" not in buf:
                        data = sock.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    size = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            size = int(line.split(b":")[1])
                    while len(buf) < size:
                        buf += sock.recv(65536)
                    buf = buf[size:]
                    with self.lock:
                        n = self.requests
                        self.requests += 1
                    self.script(n, sock)
            except OSError:
                return

    def close(self) -> None:
        self.closing.set()
        self.listener.close()

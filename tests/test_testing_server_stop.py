"""``FakeServer.stop()`` while clients are still connecting: every accepted connection is
closed, nothing leaks or raises in the server thread, and stop() returns."""

from __future__ import annotations

import contextlib
import gc
import socket
import sys
import threading
import warnings
from typing import Any

import pytest

from lmlink.testing import FakeServer

ROUNDS = 20
CONNECTORS = 4
# Generous: stop() normally returns at once; this only turns a hang into a failure.
NO_HANG = 120.0


def _connect_until(port: int, stop: threading.Event, opened: list[int]) -> None:
    """Open connections (each sends a request) as fast as possible until ``stop``, or
    until the server refuses them."""
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return
        with sock:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            opened.append(1)


def test_stop_right_after_a_burst_of_connects_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many stop()s, each while several threads are connecting: stop() returns, the server
    records no error, every connection it saw is closed, and no socket or transport is left
    unclosed (asyncio would report it as a ResourceWarning from a finaliser)."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    srv = FakeServer()
    opened: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for _ in range(ROUNDS):
            srv.start()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_connect_until, args=(srv.port, stop, opened))
                for _ in range(CONNECTORS)
            ]
            for t in threads:
                t.start()
            # Stop once connections are arriving (not after a fixed sleep).
            assert srv.wait_for(lambda: srv.live_stats.connections_opened > 0, timeout=NO_HANG)
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
            stopper.join(NO_HANG)
            assert not stopper.is_alive(), "stop() hung"
            stop.set()
            for t in threads:
                t.join(NO_HANG)
                assert not t.is_alive()
            stats = srv.stats
            assert stats.active_connections == 0, stats
        gc.collect()
    assert srv.errors == []
    assert opened  # the bursts did connect
    leaks = [f"{u.exc_value!r} in {u.object!r}" for u in unraisable]
    assert leaks == []


def test_a_stopped_server_starts_again_and_answers(server: FakeServer) -> None:
    """After a stop() in the middle of connects, start() rebinds the port and serves."""
    port = server.port
    stop = threading.Event()
    thread = threading.Thread(target=_connect_until, args=(port, stop, []))
    thread.start()
    assert server.wait_for(lambda: server.live_stats.connections_opened > 0, timeout=NO_HANG)
    server.stop()
    stop.set()
    thread.join(NO_HANG)
    server.start()
    assert server.port == port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert server.errors == []

"""Run a coroutine from the command line so that Ctrl-C or SIGTERM stops it cleanly.

``asyncio.run`` turns the first SIGINT into a cancellation of its task, but a second one
raises KeyboardInterrupt wherever the program happens to be: between writing a result line
and counting it, or inside asyncio's own clean-up, which can then wait forever with the
output still locked. Here the signals go through the event loop instead: the first one
cancels the run (the lines written so far stay whole and the summary matches them), later
ones only say that it is stopping. A signal the shell set to be ignored stays ignored.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupted", "run_interruptible"]

T = TypeVar("T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was cancelled by a signal; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_interruptible(coro: Coroutine[Any, Any, T], notice: Callable[[str], None]) -> T:
    """``asyncio.run(coro)``, but SIGINT/SIGTERM cancel it once and raise :class:`Interrupted`
    after it has stopped; ``notice`` is told about any further signal, and once interrupted
    the process ignores them (it has only its summary left to print)."""
    if sys.platform == "win32":  # pragma: no cover - no add_signal_handler there
        return asyncio.run(coro)
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            notice("lmlink: stopping; the lines already written are kept")
            return
        received.append(signum)
        task.cancel()

    installed: list[int] = []
    try:
        for signum in _SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (ValueError, RuntimeError):  # not the main thread: Python's handlers stay
                continue
            installed.append(signum)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if received:
                raise Interrupted(received[0]) from None
            raise
    finally:
        try:
            _cancel_rest(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            for number in installed:
                loop.remove_signal_handler(number)
                if received:  # the program is about to print its summary and exit
                    signal.signal(number, signal.SIG_IGN)
            loop.close()


def _cancel_rest(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await whatever tasks the run left behind, as ``asyncio.run`` does."""
    rest = asyncio.all_tasks(loop)
    for task in rest:
        task.cancel()
    if rest:
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))

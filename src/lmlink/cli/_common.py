"""Options and error handling shared by the commands."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def server_options(fn: F, *, many_endpoints: bool = False) -> F:
    """-e/--endpoint, -m/--model, --api-key, --timeout; with ``many_endpoints`` -e may be
    given again (and LMLINK_ENDPOINT may list URLs, comma-separated)."""
    fn = click.option(
        "--timeout",
        type=click.FloatRange(0, min_open=True),
        default=120.0,
        show_default=True,
        help="Idle timeout in seconds (longest wait for any byte).",
    )(fn)
    fn = click.option(
        "--api-key",
        envvar="LMLINK_API_KEY",
        default=None,
        help="Bearer token, if the server wants one [env: LMLINK_API_KEY].",
    )(fn)
    fn = click.option(
        "-m",
        "--model",
        envvar="LMLINK_MODEL",
        default=None,
        help="Model name [env: LMLINK_MODEL; default: the server's first].",
    )(fn)
    if many_endpoints:
        return click.option(
            "-e",
            "--endpoint",
            envvar="LMLINK_ENDPOINT",
            multiple=True,
            help="Base URL through /v1; give it again to share the work among several "
            "servers [env: LMLINK_ENDPOINT, comma-separated].",
        )(fn)
    return click.option(
        "-e",
        "--endpoint",
        envvar="LMLINK_ENDPOINT",
        default=None,
        help="Base URL through /v1 [env: LMLINK_ENDPOINT].",
    )(fn)


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit ``code`` (1: the call failed; 2: the settings are wrong) with a one-line message
    on stderr."""
    say(f"lmlink: {for_cli(message)}")
    sys.exit(code)


# The library's advice names Python calls; on the command line, the commands that do it.
_CLI_WORDS = (
    ("client.models()", "`lmlink models`"),
    ("pass model= or set LMLINK_MODEL", "pass -m MODEL or set LMLINK_MODEL"),
    ("pass endpoint='http://127.0.0.1:8080/v1'", "pass -e http://127.0.0.1:8080/v1"),
)


def for_cli(message: str) -> str:
    """A library message in the words of the command line (``lmlink models``, ``-m``)."""
    for python, command in _CLI_WORDS:
        message = message.replace(python, command)
    return message


_stderr: dict[str, bool] = {"gone": False}


def say(message: str, **style: Any) -> None:
    """One line on stderr. If stderr is gone (a closed pipe, a log reader that exited),
    the line is dropped and so is every later one: diagnostics never stop the work."""
    if _stderr["gone"]:
        return
    try:
        click.secho(message, err=True, **style)
    except (OSError, ValueError):  # EPIPE, EIO, or a closed file
        _stderr["gone"] = True
        _silence_stderr()


def _silence_stderr() -> None:
    """Send later stderr writes (ours, and Python's own at exit) to /dev/null. The file
    descriptor is left alone: it may be the pipe that broke, never something else."""
    with contextlib.suppress(OSError):
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives to the exit

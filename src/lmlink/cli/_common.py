"""Options and error handling shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def server_options(fn: F) -> F:
    """-e/--endpoint, -m/--model, --api-key, --timeout."""
    fn = click.option(
        "--timeout",
        type=float,
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
    return click.option(
        "-e",
        "--endpoint",
        envvar="LMLINK_ENDPOINT",
        default=None,
        help="Base URL through /v1 [env: LMLINK_ENDPOINT].",
    )(fn)


def fail(message: str) -> None:
    """Exit 1 with a one-line message on stderr."""
    click.echo(f"lmlink: {message}", err=True)
    sys.exit(1)

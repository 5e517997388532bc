"""``lmlink embed``: the embedding of every row of a file, on the batch command's machinery.

The same guarantees and exit codes as ``lmlink batch`` (see :mod:`._batch`): input problems
are reported before anything is sent (exit 2), every line is appended and fsynced, a re-run
continues where the last one stopped, Ctrl-C or SIGTERM stop cleanly (130 or 143); 0 when
every id has a vector, 3 when some have only an error line, 1 when it stopped.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._batch import run_batch_command, run_options

__all__ = ["embed"]

F = TypeVar("F", bound=Callable[..., Any])


def embed_options(fn: F) -> F:
    """The options of a run, without those of chat requests."""
    return run_options(fn, chat=False)


@click.command()
@embed_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Inputs sent in one request.",
)
@click.option(
    "--dimensions",
    type=click.IntRange(1),
    default=None,
    help="Shorter vectors, for models that can give them.",
)
def embed(batch_size: int, dimensions: int | None, **options: Any) -> None:
    """Embed the text of every row of INPUT (JSONL, or CSV with a header).

    \b
    The text is a row's "text" or "prompt" field, or --template 'Title: {title}'
    (every field is data for it: a "model" column does not pick the model).
    Each line of OUTPUT is {"id", "embedding": [...]} or {"id", "error": {...}};
    the first is lmlink's header (an embeddings output: `lmlink batch` refuses it,
    and `lmlink embed` refuses a batch output). --batch-size inputs go in one
    request; if a request fails because of one input, its group is split until
    only that input gets an error line. Run it again to continue after a crash;
    --retry-errors to redo failed ids. Exit 0 when every id has a vector, 3 when
    some have only an error line, 1 when it stopped (no server, a refused key or
    model, a server that does not embed), 2 on bad input or an output that cannot
    be used, 130 on Ctrl-C, 143 on SIGTERM.
    """
    from lmlink.batch._embed import EMBED_TASK, EmbedRunner

    params: dict[str, Any] = {}
    if dimensions is not None:
        params["dimensions"] = dimensions
    code = run_batch_command(
        EMBED_TASK,
        "embed",
        system=None,
        temperature=None,
        max_tokens=None,
        cache=None,
        stream=None,
        params=params,
        runner_class=functools.partial(EmbedRunner, batch_size=batch_size),
        **options,
    )
    sys.exit(code)

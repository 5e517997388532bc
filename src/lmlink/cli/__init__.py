"""The ``lmlink`` command line. One module per command group; lmlink itself and rich are
imported inside the commands, so ``lmlink --help`` stays fast."""

from __future__ import annotations

import click

from .._version import __version__
from ._batch import batch, classify, extract, summarize
from ._chat import chat, models, servers
from ._demo import demo
from ._embed import embed

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmlink")
def main() -> None:
    """Run LLM work against local OpenAI-compatible servers (Ollama, vLLM, llama.cpp, ...).

    The server comes from -e/--endpoint or LMLINK_ENDPOINT (else the first local server
    found on the usual ports), the model from -m/--model or LMLINK_MODEL.

    \b
    No server at hand? `python -m lmlink.testing --port 8080` runs lmlink's test server
    (canned answers; classify labels by keywords, extract fields shaped by the schema);
    then pass -e http://127.0.0.1:8080/v1.
    Batch (and embed) exit codes: 0 every id answered, 3 some ids have only an error line
    (--retry-errors redoes them), 1 stopped (no server, key, model), 2 bad input.
    """


main.add_command(chat)
main.add_command(models)
main.add_command(servers)
main.add_command(demo)
main.add_command(batch)
main.add_command(classify)
main.add_command(summarize)
main.add_command(extract)
main.add_command(embed)

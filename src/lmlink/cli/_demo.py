"""``lmlink demo``: the README's first command. A streamed chat against the configured
server, or, when there is none, against the bundled test server with its canned replies."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import click

from ._common import fail

PROMPT = "In two sentences: why run LLM batch work on your own hardware?"
CANNED = (
    "Running batch work on your own hardware keeps your data at home and costs nothing per "
    "token. lmlink makes it dependable: typed errors, honest timeouts and retries that wait "
    "for a model to load."
)


@click.command()
@click.option(
    "-e",
    "--endpoint",
    envvar="LMLINK_ENDPOINT",
    default=None,
    help="Base URL through /v1 [env: LMLINK_ENDPOINT].",
)
@click.option("-m", "--model", envvar="LMLINK_MODEL", default=None, help="Model name.")
@click.option("--prompt", default=PROMPT, show_default=True)
def demo(endpoint: str | None, model: str | None, prompt: str) -> None:
    """Stream one chat: against your server, or the bundled test server (canned replies)."""
    import lmlink

    with ExitStack() as stack:
        if endpoint:
            click.secho(f"Server: {endpoint}", fg="green", err=True)
        else:
            endpoint, model = _start_test_server(stack, model)
        client = stack.enter_context(lmlink.Client(endpoint=endpoint, model=model, timeout=120))
        if not client.model:
            try:
                model = client.models()[0].id
            except (lmlink.LMLinkError, IndexError) as exc:
                fail(f"could not list the server's models: {exc}")
        click.secho(f"Model:  {model or client.model}\n", fg="green", err=True)
        click.secho(f"> {prompt}\n", bold=True, err=True)
        try:
            resp = client.chat_stream(prompt, model=model, on_delta=_echo)
        except lmlink.LMLinkError as exc:
            click.echo()
            fail(str(exc))
        click.echo()
        _summary(resp)


def _echo(text: str) -> None:
    click.echo(text, nl=False)


def _start_test_server(stack: ExitStack, model: str | None) -> tuple[str, str]:
    from lmlink.testing import FakeServer, Reply

    name = model or "lmlink-test-model"
    server = stack.enter_context(FakeServer(model=name))
    server.responder = lambda request: Reply(content=CANNED, chunk_chars=6, delay=0.02)
    banner = (
        "No LLM server configured (set LMLINK_ENDPOINT or pass -e URL).\n"
        f"Using lmlink's bundled TEST SERVER at {server.url}: its replies are CANNED,\n"
        "not written by a model."
    )
    click.secho(banner, fg="yellow", bold=True, err=True)
    return server.url, name


def _summary(resp: Any) -> None:
    parts = [f"finish={resp.finish_reason}"]
    if resp.prompt_tokens is not None:
        parts.append(f"tokens in/out={resp.prompt_tokens}/{resp.output_tokens}")
    if resp.ttft_s is not None:
        parts.append(f"ttft={resp.ttft_s * 1000:.0f} ms")
    parts.append(f"total={(resp.latency_s or 0) * 1000:.0f} ms")
    if resp.tokens_per_s:
        parts.append(f"{resp.tokens_per_s:.1f} tok/s")
    click.secho("\n" + "  ".join(parts), dim=True, err=True)

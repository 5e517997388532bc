"""``lmlink chat`` and ``lmlink models``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ._common import fail, server_options


def _client(endpoint: str | None, model: str | None, api_key: str | None, timeout: float) -> Any:
    import lmlink

    try:
        client = lmlink.Client(endpoint=endpoint, model=model, api_key=api_key, timeout=timeout)
    except lmlink.LMLinkError as exc:  # a bad endpoint or timeout: say which
        fail(str(exc), code=2)
    if client.endpoint is None:
        try:
            client.models()  # finds a local server, or says there is none
        except lmlink.LMLinkError as exc:
            client.close()
            if client.endpoint is None:
                fail(
                    "no server: pass -e http://127.0.0.1:8080/v1 or set LMLINK_ENDPOINT "
                    "(no local server answered on the usual ports)"
                )
            fail(str(exc))
    return client


def _pick_model(client: Any) -> str:
    import lmlink

    if client.model:
        return str(client.model)
    try:
        found = client.models()
    except lmlink.LMLinkError as exc:
        fail(f"no model given and the model list failed: {exc}")
    if not found:
        fail("no model given (-m) and the server lists none")
    return str(found[0].id)


@click.command()
@click.argument("prompt", required=False)
@server_options
@click.option("--system", default=None, help="A system message.")
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option("--json", "json_mode", is_flag=True, help="Ask for a JSON object.")
@click.option(
    "--schema",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON schema file the answer must match.",
)
@click.option("--show-reasoning", is_flag=True, help="Print the reasoning, dimmed, on stderr.")
def chat(
    prompt: str | None,
    endpoint: str | None,
    model: str | None,
    api_key: str | None,
    timeout: float,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    json_mode: bool,
    schema: Path | None,
    show_reasoning: bool,
) -> None:
    """Stream the answer to PROMPT (or to stdin with '-') to stdout."""
    import lmlink

    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise click.UsageError("give a PROMPT, or '-' to read it from stdin")
        prompt = sys.stdin.read()
    response_format: Any = "json" if json_mode else None
    if schema is not None:
        try:
            response_format = json.loads(schema.read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(
                f"cannot read the schema: {exc}", param_hint="--schema"
            ) from exc
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    with _client(endpoint, model, api_key, timeout) as client:
        name = _pick_model(client)

        def on_reasoning(text: str) -> None:
            click.secho(text, err=True, dim=True, nl=False)

        try:
            resp = client.chat_stream(
                messages,
                on_delta=lambda t: click.echo(t, nl=False),
                model=name,
                on_reasoning=on_reasoning if show_reasoning else None,
                temperature=temperature,
                max_tokens=max_tokens,
                response_format=response_format,
            )
        except lmlink.LMLinkError as exc:
            click.echo()
            fail(str(exc))
        if not resp.content.endswith("\n"):
            click.echo()


@click.command()
@server_options
def models(endpoint: str | None, model: str | None, api_key: str | None, timeout: float) -> None:
    """List the server's models, one per line."""
    import lmlink

    with _client(endpoint, model, api_key, timeout) as client:
        try:
            found = client.models()
        except lmlink.LMLinkError as exc:
            fail(str(exc))
        for info in found:
            click.echo(info.id)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", "ports", type=int, multiple=True, help="Ports to probe (repeatable).")
@click.option("--timeout", type=float, default=0.5, show_default=True)
def servers(host: str, ports: tuple[int, ...], timeout: float) -> None:
    """Find the OpenAI-compatible servers on this machine: kind and models of each."""
    import lmlink

    try:
        found = lmlink.discover(ports=ports or None, host=host, timeout=timeout)
    except lmlink.LMLinkError as exc:
        fail(str(exc))
    if not found:
        click.echo("no server found", err=True)
        sys.exit(1)
    for info in found:
        models = ", ".join(info.models[:8]) + (" ..." if len(info.models) > 8 else "")
        click.echo(f"{info.endpoint}\t{info.kind}\t{models}")

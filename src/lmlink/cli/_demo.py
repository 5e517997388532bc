"""``lmlink demo``: the README's first command. ``lmlink classify`` over 300 bundled support
tickets, against the configured server, or, when there is none, against the bundled test
server, whose answers are canned (a keyword match), and which says so."""

from __future__ import annotations

import json
import sys
import zlib
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from ._common import fail

LABELS = ("billing", "bug", "feature_request", "account_access", "shipping", "other")
DEFAULT_OUTPUT = "lmlink-demo-output.jsonl"


def canned_label(text: str) -> str:
    """The test server's stand-in for a model: a keyword match, ``other`` if none."""
    from lmlink.testing._answers import keyword_label

    return keyword_label(text, LABELS)


def tickets_path() -> Path:
    """The bundled tickets: in the installed package, or in the source checkout."""
    here = Path(__file__).resolve()
    for candidate in (
        here.parent.parent / "_data" / "tickets.jsonl",
        here.parents[3] / "examples" / "tickets.jsonl",
        Path.cwd() / "examples" / "tickets.jsonl",
    ):
        if candidate.is_file():
            return candidate
    fail("the bundled examples/tickets.jsonl is missing from this installation")
    raise AssertionError("unreachable")


def _discovered(model: str | None) -> tuple[str | None, str | None]:
    """The first local server found on the usual ports (unless LMLINK_NO_DISCOVERY is set)."""
    import os

    import lmlink

    if os.environ.get("LMLINK_NO_DISCOVERY", "").strip() not in ("", "0"):
        return None, model
    try:
        found = lmlink.discover()
    except lmlink.LMLinkError as exc:  # a bad LMLINK_DISCOVER_PORTS
        fail(str(exc))
    if not found:
        return None, model
    kind = "" if found[0].kind == "unknown" else f" ({found[0].kind})"
    click.secho(f"Found a server at {found[0].endpoint}{kind}.", fg="green", err=True)
    return found[0].endpoint, model or found[0].models[0]


@click.command()
@click.option(
    "-e",
    "--endpoint",
    envvar="LMLINK_ENDPOINT",
    default=None,
    help="Base URL through /v1 [env: LMLINK_ENDPOINT; default: the bundled test server].",
)
@click.option("-m", "--model", envvar="LMLINK_MODEL", default=None, help="Model name.")
@click.option("--api-key", envvar="LMLINK_API_KEY", default=None, help="Bearer token, if needed.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Where the results go (replaced on every demo run).",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "lines", "off"]),
    default="auto",
    show_default=True,
)
def demo(
    endpoint: str | None,
    model: str | None,
    api_key: str | None,
    output: Path,
    concurrency: int,
    progress: str,
) -> None:
    """Classify 300 support tickets: `lmlink classify` against your server (LMLINK_ENDPOINT),
    or the bundled test server (canned answers), with progress, a summary and a JSONL file."""
    from lmlink.batch import Task

    from ._batch import run_batch_command

    source = tickets_path()
    if output.is_dir():
        raise click.BadParameter(f"{output} is a directory", param_hint="-o")
    with ExitStack() as stack:
        if not endpoint:
            endpoint, model = _discovered(model)
        if endpoint:
            announce = _real_banner(endpoint, model)
        else:
            endpoint, model = _start_test_server(stack, model)
            announce = _canned_banner(endpoint)
        output.unlink(missing_ok=True)
        code = run_batch_command(
            Task.classify(LABELS),
            "classify",
            input_path=source,
            output=output,
            endpoint=endpoint,
            model=model,
            api_key=api_key,
            timeout=120.0,
            concurrency=concurrency,
            template=None,
            system=None,
            temperature=0.0,
            max_tokens=None,
            cache=None,
            retry_errors=False,
            stream=None,
            progress=progress,
            announce=announce,
        )
    if output.exists():
        _show_results(source, output)
        if code in (0, 3) and not _any_answer(output):
            click.secho("lmlink: no ticket got an answer; see the errors above", fg="red", err=True)
            code = 1
    sys.exit(code)


def _results(output: Path) -> list[dict[str, Any]]:
    """The result lines of an output (its header line skipped)."""
    lines = output.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if "id" in r]


def _any_answer(output: Path) -> bool:
    """Whether any line of the demo's output is an answer rather than an error."""
    return any("error" not in record for record in _results(output))


def _real_banner(endpoint: str, model: str | None) -> Any:
    def announce() -> None:
        click.secho(f"Server: {endpoint}", fg="green", err=True)
        click.secho(f"Model:  {model or '(the first one the server lists)'}", fg="green", err=True)

    return announce


def _canned_banner(url: str) -> Any:
    def announce() -> None:
        click.secho(
            "No LLM server configured or found on the usual local ports\n"
            "(set LMLINK_ENDPOINT or pass -e URL).\n"
            f"Using lmlink's bundled TEST SERVER at {url}: its labels are CANNED\n"
            "(a keyword match), not chosen by a model. It also answers a few requests with\n"
            "429 'slow down', to show retries and the adaptive concurrency at work.",
            fg="yellow",
            bold=True,
            err=True,
        )

    return announce


def _start_test_server(stack: ExitStack, model: str | None) -> tuple[str, str]:
    from lmlink.testing import FakeServer, Faults, Reply

    name = model or "lmlink-test-model"
    server = stack.enter_context(FakeServer(model=name))

    def respond(request: Any) -> Reply:
        text = str(request.json["messages"][-1]["content"])
        label = canned_label(text)
        # Paced like a small model on a small GPU: 100-200 ms an answer.
        delay = 0.1 + (zlib.crc32(text.encode()) % 101) / 1000
        return Reply(content=json.dumps({"label": label}), chunk_chars=4, delay=delay)

    server.responder = respond
    # One request in a hundred: enough to see retries and the limit halve and grow back;
    # more keep the limit low for most of the run and only make the demo slow.
    server.faults = Faults(seed=7, p_429=0.01, retry_after=0.2)
    return server.url, name


def _show_results(source: Path, output: Path) -> None:
    """Label counts and a few examples, on stdout (the data; the rest went to stderr)."""
    texts: dict[str, str] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts[row["id"]] = row.get("text", "")
    records = _results(output)
    labels = Counter(str(r.get("label")) for r in records if "label" in r)
    if not labels:
        return
    click.echo("\nTickets per label:")
    width = max(len(k) for k in labels)
    for label, count in labels.most_common():
        click.echo(f"  {label:<{width}}  {count:>4}  {'█' * max(1, count // 4)}")
    click.echo("\nA few of them:")
    for record in sorted(records, key=lambda r: str(r["id"]))[:5]:
        text = texts.get(record["id"], "")
        text = text if len(text) <= 70 else text[:67] + "..."
        label = str(record.get("label"))
        click.echo(f"  {record['id']}  {label:<{width}}  {text}")
    click.echo(f"\nEvery result, one JSON line per ticket: {output}")

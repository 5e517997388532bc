"""``lmlink batch`` and its presets ``classify``, ``summarize`` and ``extract``.

All four share the options and guarantees of :mod:`lmlink.batch`: every input problem is
reported before anything is sent (exit 2), each result is appended and fsynced as one line,
a re-run skips the ids already in the output (if its settings are the same), Ctrl-C or
SIGTERM stops cleanly (exit 130 or 143; further presses never interrupt the clean-up).
Progress and the summary go to stderr, and are dropped if stderr goes away; stdout stays
empty. Exit codes: 0 every id has an answer, 3 finished with error lines, 1 stopped (no
server, a refused key or model), 2 bad input or an output that cannot be used.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ._batchview import make_view, show_summary
from ._common import for_cli, say, server_options

if TYPE_CHECKING:
    from lmlink.batch import Task
    from lmlink.batch._runner import Runner

__all__ = ["batch", "classify", "extract", "run_batch_command", "summarize"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130
EXIT_ERROR_LINES = 3
# The "N items from INPUT -> OUTPUT" line waits for the first result, or this long: a run
# that cannot start (no server) then says so in one line.
ANNOUNCE_AFTER = 5.0


class _Concurrency(click.ParamType[Any, Any]):
    """``auto`` or an integer from 1 to 4096."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not 1 <= number <= 4096:
            self.fail(f"{value!r} is not 'auto' or an integer from 1 to 4096", param, ctx)
        return number


_CONCURRENCY = _Concurrency()
_STREAM = click.option(
    "--stream/--no-stream",
    default=None,
    help="Streamed or plain requests [default: streams, plain with a schema].",
)


def batch_options(fn: F) -> F:
    """INPUT, -o, the server options and everything a batch run takes."""
    return run_options(fn, chat=True)


def run_options(fn: F, *, chat: bool) -> F:
    """INPUT, -o, the server options and what every run takes; with ``chat`` also the
    options of chat requests (--system, --temperature, --max-tokens, --cache, --stream)."""
    options = [
        click.argument(
            "input_path",
            metavar="INPUT",
            type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
        ),
        click.option(
            "-o",
            "--output",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="The JSONL file for the results; an existing one is resumed.",
        ),
        click.option(
            "-c",
            "--concurrency",
            type=_CONCURRENCY,
            default=None,
            help="Most requests in flight, or 'auto' [default: auto, finds what the server "
            "does best; halved on 429/503/timeouts].",
        ),
        click.option("--template", default=None, help="Render each row: 'Summarise: {text}'."),
        click.option(
            "--retry-errors", is_flag=True, help="Run again the ids whose line is an error."
        ),
        click.option(
            "--allow-changed-settings",
            is_flag=True,
            help="Add to an output made with other settings (task, labels, template, model, "
            "sampling...), or adopt one from an older lmlink; refused otherwise (exit 2).",
        ),
        click.option(
            "--shard",
            default=None,
            metavar="K/N",
            help="Run only shard K of N: a stable split by a hash of the id, for N machines.",
        ),
        click.option(
            "--progress",
            type=click.Choice(["auto", "bar", "lines", "off"]),
            default="auto",
            show_default=True,
            help="A bar on a terminal, else a line every 2 s.",
        ),
    ]
    if chat:
        options[4:4] = [
            click.option("--system", default=None, help="A system message for every item."),
            click.option("--temperature", type=float, default=None),
            click.option("--max-tokens", type=click.IntRange(1), default=None),
            click.option(
                "--cache",
                type=click.Path(path_type=Path),  # one that cannot be used: exit 2, one line
                default=None,
                help="An SQLite file of answers; cached items send nothing.",
            ),
        ]
        options.insert(-2, _STREAM)
    fn = server_options(fn, many_endpoints=True)
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load_schema(path: Path | None, option: str) -> Any:
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read the schema: {exc}", param_hint=option) from exc
    if not isinstance(schema, dict):
        raise click.BadParameter("the schema must be a JSON object", param_hint=option)
    return schema


def _exit(code: int, message: str | None = None) -> NoReturn:
    if message:
        say(f"lmlink: {for_cli(message)}")
    sys.exit(code)


def run_batch_command(
    task: Task,
    title: str,
    *,
    input_path: Path,
    output: Path,
    endpoint: str | Sequence[str] | None,
    model: str | None,
    api_key: str | None,
    timeout: float,
    concurrency: int | str | None,
    template: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    cache: Path | None,
    retry_errors: bool,
    stream: bool | None,
    progress: str,
    allow_changed_settings: bool = False,
    shard: str | None = None,
    params: dict[str, Any] | None = None,
    announce: Callable[[], None] | None = None,
    runner_class: Callable[..., Runner] | None = None,
) -> int:
    """Run one batch command to the end; return the exit code (0, 3, 1, 2, 130 or 143)."""
    from lmlink import LMLinkError
    from lmlink.batch import JournalError, Progress

    from ._interrupt import Interrupted, run_interruptible

    request = dict(params or {})
    if temperature is not None:
        request["temperature"] = temperature
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    try:
        runner = _prepare(
            task,
            input_path,
            output,
            template=template,
            system=system,
            shard=shard,
            endpoint=_endpoints(endpoint),
            model=model or None,
            api_key=api_key or None,
            concurrency=concurrency,
            timeout=timeout,
            cache=cache,
            retry_errors=retry_errors,
            allow_changed_settings=allow_changed_settings,
            stream=stream,
            params=request,
            runner_class=runner_class,
        )
        if announce is not None:
            announce()
    except KeyboardInterrupt:
        say("lmlink: interrupted before anything was sent")
        return EXIT_INTERRUPTED
    code = 0
    stopped = ""
    view = make_view(progress, title)
    announced = False

    def on_progress(p: Progress) -> None:
        nonlocal announced
        if not announced:
            if p.final and runner.summary.stopped_by and not p.done:
                return  # it never started: one line says why, below
            if not (p.done or p.final or p.elapsed_s >= ANNOUNCE_AFTER):
                return
            announced = True
            _announce(runner, input_path, output, shard)
        with contextlib.suppress(OSError, ValueError):  # stderr went away: the run goes on
            view.update(p)

    runner.on_progress = on_progress
    created = runner.journal is not None and runner.journal.state.created
    try:
        run_interruptible(runner.run(), notice=say)
    except Interrupted as exc:
        code, stopped = 128 + exc.signum, "interrupted"
    except KeyboardInterrupt:
        code, stopped = EXIT_INTERRUPTED, "interrupted"
    except JournalError as exc:  # settings that differ from the output's, known once connected
        code, stopped = 2, for_cli(exc.message)
    except LMLinkError as exc:
        code, stopped = 1, f"stopped: {type(exc).__name__}: {for_cli(str(exc))}"
        if not (runner.summary.ok or runner.summary.failed):
            stopped = for_cli(str(exc)) + (
                "; nothing was written" if created else f"; no line was added to {output}"
            )
    except OSError as exc:
        code, stopped = 1, f"stopped: cannot write {output}: {exc.strerror or exc}"
    finally:
        with contextlib.suppress(OSError, ValueError):
            view.close()
        runner.close()
    summary = runner.summary
    if code in (1, 2) and not (summary.ok or summary.failed):
        say(f"lmlink: {stopped}", fg="red")  # nothing happened: one line says why
        return code
    show_summary(summary, title=title)
    if stopped:
        say(f"lmlink: {stopped}", fg="red")
        if summary.remaining:
            say(
                f"lmlink: {summary.remaining} items not done; run the same command again to "
                "continue"
            )
    elif not summary.complete:
        code = 1
    elif not summary.succeeded:
        code = EXIT_ERROR_LINES
        n = summary.failed + summary.earlier_errors
        say(
            f"lmlink: {n} {'id has' if n == 1 else 'ids have'} an error line; run the same "
            "command with --retry-errors to redo them"
        )
    return code


def _endpoints(given: str | Sequence[str] | None) -> str | list[str] | None:
    """One URL, or the list of every -e (each may list several, comma-separated)."""
    values = [given] if isinstance(given, str) else list(given or ())
    urls = [u.strip() for v in values for u in v.split(",") if u.strip()]
    return urls if len(urls) > 1 else (urls[0] if urls else None)


def _prepare(
    task: Task,
    input_path: Path,
    output: Path,
    *,
    template: str | None,
    system: str | None,
    shard: str | None = None,
    runner_class: Callable[..., Runner] | None = None,
    **options: Any,
) -> Runner:
    """Read and check the input, open the output: the runner, or exit 2 (1 if busy)."""
    from lmlink import ConfigurationError, LMLinkError
    from lmlink.batch import BatchInputError, JournalError
    from lmlink.batch._api import check_paths
    from lmlink.batch._runner import Runner, load_items
    from lmlink.batch._shard import parse_shard

    if str(output) == "-":
        # The output is the run's journal: a re-run reads it to skip what is done, so it
        # has to be a file (stdout cannot be read back).
        _exit(
            2,
            "-o -: the output must be a file, not stdout: a re-run continues from it; "
            "give a file (-o results.jsonl) and read it when the run ends",
        )
    try:
        part = parse_shard(shard)
    except ConfigurationError as exc:
        _exit(2, f"--shard: {exc}")
    try:
        items = load_items(str(input_path), task, template, system)
    except BatchInputError as exc:
        _exit(2, exc.message)
    try:
        check_paths(None if str(input_path) == "-" else input_path, output, options["cache"])
        make = runner_class or Runner
        runner = make(
            items, output, task=task, template=template, system=system, shard=part, **options
        )
        state = runner.prepare()
    except JournalError as exc:
        _exit(1 if exc.busy else 2, exc.message)
    except LMLinkError as exc:
        _exit(2, str(exc))
    if state.repaired_bytes:
        say(
            f"lmlink: warning: {output} ended in a torn line ({state.repaired_bytes} bytes, "
            "from a run that was killed); removed it, that item runs again",
            fg="yellow",
        )
    return runner


def _announce(runner: Runner, input_path: Path, output: Path, shard: str | None) -> None:
    total = runner.summary.total
    pending = runner.pending_count
    dropped = runner.summary.retried
    where = f"{input_path} (shard {shard.strip()})" if shard else str(input_path)
    line = f"lmlink: {total} {'item' if total == 1 else 'items'} from {where} → {output}"
    if total != pending:
        line += f" ({total - pending} already done, {pending} to run)"
    if dropped:
        line += f"; running {dropped} error lines again"
    say(line)


@click.command()
@batch_options
@click.option("--json", "json_mode", is_flag=True, help="Ask for a JSON object.")
@click.option(
    "--schema",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='A JSON schema file every answer must match (the object is in "parsed").',
)
def batch(json_mode: bool, schema: Path | None, **options: Any) -> None:
    """Run every item of INPUT (JSONL, or CSV with a header) through the model.

    \b
    Rows: {"id": "a1", "prompt": "..."} or {"id": "a1", "messages": [...]}, or any
    fields with --template 'Summarise: {text}'. Rows may set max_tokens, temperature,
    top_p, seed, stop, model. Each result is one line of OUTPUT:
    {"id", "content", "reasoning", "parsed", "finish_reason", "prompt_tokens",
    "output_tokens", "latency_s", "ttft_s", "model"} or {"id", "error": {...}}.
    The first line of OUTPUT is lmlink's header with the run's settings. Run it
    again to continue after a crash; --retry-errors to redo failed ids. A run with
    other settings (task, labels, template, model, sampling) is refused unless
    --allow-changed-settings. Exit 0 when every id has an answer, 3 when some have
    only an error line, 1 when it stopped (no server, a refused key or model),
    2 on bad input or an output that cannot be used, 130 on Ctrl-C, 143 on SIGTERM.
    """
    from lmlink.batch import Task

    params: dict[str, Any] = {}
    response_format = _load_schema(schema, "--schema")
    if response_format is not None:
        params["response_format"] = response_format
    elif json_mode:
        params["response_format"] = {"type": "object"}
    sys.exit(run_batch_command(Task(), "batch", params=params, **options))


@click.command()
@batch_options
@click.option("--labels", required=True, help="The labels to choose from, comma-separated: a,b,c.")
def classify(labels: str, **options: Any) -> None:
    """Label every text of INPUT with one of --labels; lines gain "label".

    The text is the row's "text" or "prompt" field, or --template. The answer is
    constrained by a JSON schema with the labels as an enum.
    """
    from lmlink import ConfigurationError
    from lmlink.batch import Task

    try:
        task = Task.classify([s for s in labels.split(",") if s.strip()])
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from exc
    sys.exit(run_batch_command(task, "classify", **options))


@click.command()
@batch_options
@click.option("--max-words", type=click.IntRange(1), default=50, show_default=True)
def summarize(max_words: int, **options: Any) -> None:
    """Summarise every text of INPUT; the summary is "content".

    The text is the row's "text" or "prompt" field, or --template.
    """
    from lmlink.batch import Task

    sys.exit(run_batch_command(Task.summarize(max_words), "summarize", **options))


@click.command()
@batch_options
@click.option(
    "--schema",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON schema file of the fields to extract.",
)
def extract(schema: Path, **options: Any) -> None:
    """Extract the fields of --schema from every text of INPUT; the object is "parsed".

    The text is the row's "text" or "prompt" field, or --template.
    """
    from lmlink.batch import Task

    task = Task.extract(_load_schema(schema, "--schema"))
    sys.exit(run_batch_command(task, "extract", **options))

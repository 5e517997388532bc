"""Helpers shared by the batch tests (not a test module): JSONL files and the CLI as a
real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmlink.batch._header import header_line, is_header, make_settings

_SCRIPT = Path(sys.executable).with_name("lmlink")


def lmlink_command() -> list[str]:
    """The installed ``lmlink`` console script, or the same entry point through Python."""
    if _SCRIPT.is_file():
        return [str(_SCRIPT)]
    return [sys.executable, "-c", "from lmlink.cli import main; main()"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no server settings, no discovery."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LMLINK_", "OPENAI_")) and k != "PYTEST_CURRENT_TEST"
    }
    env["LMLINK_NO_DISCOVERY"] = "1"
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], *, cwd: Path | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``lmlink ARGS`` to the end and capture its output."""
    return subprocess.run(
        [*lmlink_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=clean_env(**env),
        check=False,
    )


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Write one JSON value per line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON (fails on an invalid line), without the header record
    that starts a batch output."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if rows and is_header(rows[0]):
        rows = rows[1:]
    assert not any(is_header(row) for row in rows), "a header record after the first line"
    return rows


def read_header(path: Path) -> dict[str, Any]:
    """The header record of a batch output (its first line)."""
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert is_header(first), first
    return first  # type: ignore[no-any-return]


def settings(**changes: Any) -> dict[str, Any]:
    """The settings record of ``lmlink batch IN -o OUT -m fake-model``, with ``changes``."""
    base: dict[str, Any] = {
        "task": "batch",
        "instructions": None,
        "template": None,
        "system": None,
        "model": "fake-model",
        "params": {},
    }
    return make_settings(**{**base, **changes})


def write_output(path: Path, records: Iterable[Any], **changes: Any) -> Path:
    """A batch output as lmlink writes it: the header (with :func:`settings`), then
    ``records``, one per line."""
    path.write_bytes(header_line(settings(**changes)))
    with path.open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps(row) + "\n" for row in records))
    return path


def prompts(n: int, prefix: str = "p") -> list[dict[str, str]]:
    """``n`` simple prompt rows with ids ``{prefix}000``..."""
    return [{"id": f"{prefix}{i:03d}", "prompt": f"question {i}"} for i in range(n)]

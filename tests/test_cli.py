"""The chat, models and servers commands, through click's runner and as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmlink.cli import main
from lmlink.testing import FakeServer, Reply


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_chat_streams_the_answer_to_stdout(server: FakeServer) -> None:
    """`lmlink chat PROMPT` prints the streamed answer on stdout, nothing else."""
    server.enqueue(Reply(content="Hello from the model", chunk_chars=3))
    code, out, _ = run("chat", "Hi", "-e", server.url, "-m", "fake-model")
    assert code == 0
    assert out == "Hello from the model\n"
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]


def test_chat_reads_stdin_and_sends_options(server: FakeServer) -> None:
    """'-' reads the prompt from stdin; --system, --max-tokens and --json reach the request."""
    server.enqueue(Reply(content='{"a": 1}'))
    code, out, _ = run(
        "chat",
        "-",
        "-e",
        server.url,
        "-m",
        "fake-model",
        "--system",
        "Be terse.",
        "--max-tokens",
        "7",
        "--json",
        stdin="What?",
    )
    assert code == 0
    assert json.loads(out) == {"a": 1}
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["messages"][1]["content"] == "What?"
    assert sent["max_tokens"] == 7
    assert sent["response_format"] == {"type": "json_object"}


def test_chat_shows_reasoning_on_stderr_only(server: FakeServer) -> None:
    """--show-reasoning writes the reasoning to stderr; stdout keeps only the answer."""
    server.enqueue(Reply(content="42", reasoning="Thinking hard."))
    code, out, err = run("chat", "q", "-e", server.url, "-m", "fake-model", "--show-reasoning")
    assert code == 0
    assert out == "42\n"
    assert "Thinking hard." in err


def test_api_error_exits_1_with_one_line(server: FakeServer) -> None:
    """An API error gives exit 1 and a one-line message naming it."""
    server.enqueue(Reply.error(404, "model 'nope' not found"))
    code, _, err = run("chat", "x", "-e", server.url, "-m", "nope")
    assert code == 1
    assert "404" in err
    assert len(err.strip().splitlines()) == 1


def test_usage_error_exits_2() -> None:
    """An unknown option is a usage error: exit 2."""
    code, _, _ = run("chat", "--no-such-option")
    assert code == 2


def test_models_and_servers_list(server: FakeServer) -> None:
    """`models` prints the ids; `servers` finds the server on the given port."""
    code, out, _ = run("models", "-e", server.url)
    assert (code, out) == (0, "fake-model\n")
    code, out, _ = run("servers", "--port", str(server.port))
    assert code == 0
    assert out.split("\t")[0] == server.url
    assert "fake-model" in out


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    """With nothing configured and nothing found, chat says so and exits 1."""
    code, _, err = run("chat", "x")
    assert code == 1
    assert "no server" in err


@pytest.mark.parametrize("args", [["--help"], ["chat", "--help"], ["batch", "--help"]])
def test_help_as_a_real_process(args: list[str]) -> None:
    """The console script runs as a real process and prints help."""
    env = dict(os.environ, LMLINK_NO_DISCOVERY="1")
    out = subprocess.run(
        [sys.executable, "-m", "lmlink", *args], capture_output=True, text=True, env=env, check=True
    )
    assert "Usage:" in out.stdout

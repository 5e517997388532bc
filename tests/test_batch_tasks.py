"""The task presets, classify / summarize / extract: what they send and what they write, from
Python and from the command line (click's CliRunner)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import lmlink
from batch_helpers import read_jsonl, write_jsonl
from lmlink.batch import Task, run_batch
from lmlink.cli import main
from lmlink.testing import FakeServer, RecordedRequest, Reply

TICKETS = [
    {"id": "t1", "text": "I was charged twice"},
    {"id": "t2", "text": "The app crashes on start"},
    {"id": "t3", "prompt": "Where is my parcel?"},
]


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def _label(request: RecordedRequest) -> Reply:
    text = request.json["messages"][-1]["content"]
    label = "billing" if "charged" in text else "bug" if "crash" in text else "other"
    return Reply(content=json.dumps({"label": label}))


def _cli(server: FakeServer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "-e", server.url, "-m", "fake-model"])
    return result.exit_code, result.stdout, result.stderr


def test_classify_sends_the_enum_schema_and_adds_label(server: FakeServer, tmp_path: Path) -> None:
    """classify constrains the answer to the labels and writes "label" on each line."""
    server.responder = _label
    src = write_jsonl(tmp_path / "in.jsonl", TICKETS)
    out = tmp_path / "out.jsonl"
    code, stdout, stderr = _cli(
        server, "classify", str(src), "-o", str(out), "--labels", "billing,bug,other"
    )
    assert code == 0, stderr
    assert stdout == ""
    labels = {line["id"]: line["label"] for line in read_jsonl(out)}
    assert labels == {"t1": "billing", "t2": "bug", "t3": "other"}
    line = read_jsonl(out)[0]
    assert line["parsed"] == {"label": line["label"]}
    body = server.requests[0].json
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema == {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["billing", "bug", "other"]}},
        "required": ["label"],
    }
    assert "billing, bug, other" in body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "system"


def test_classify_an_answer_outside_the_labels_is_an_error_line(
    server: FakeServer, tmp_path: Path
) -> None:
    """A label that is not in the enum fails validation and is written as an error."""
    server.responder = lambda r: Reply(content='{"label": "weather"}')
    out = tmp_path / "out.jsonl"
    summary = run_batch(
        TICKETS[:1],
        out,
        endpoint=server.url,
        model="fake-model",
        task=Task.classify(["billing", "bug"]),
    )
    assert read_jsonl(out)[0]["error"]["type"] == "StructuredOutputError"
    assert summary.errors == {"StructuredOutputError": 1}


def test_classify_with_a_template(server: FakeServer, tmp_path: Path) -> None:
    """--template builds the text from any fields."""
    server.responder = _label
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "x", "subject": "Refund", "body": "charged twice"}]
    )
    out = tmp_path / "out.jsonl"
    code, _, stderr = _cli(
        server,
        "classify",
        str(src),
        "-o",
        str(out),
        "--labels",
        "billing,other",
        "--template",
        "{subject}: {body}",
    )
    assert code == 0, stderr
    assert server.requests[0].json["messages"][-1]["content"] == "Refund: charged twice"
    assert read_jsonl(out)[0]["label"] == "billing"


def test_classify_needs_two_labels(server: FakeServer, tmp_path: Path) -> None:
    """A single label is a usage error (exit 2), before anything is sent."""
    src = write_jsonl(tmp_path / "in.jsonl", TICKETS)
    code, _, stderr = _cli(
        server, "classify", str(src), "-o", str(tmp_path / "o.jsonl"), "--labels", "solo"
    )
    assert code == 2
    assert "--labels" in stderr
    assert server.stats.requests == 0


def test_summarize_asks_for_at_most_n_words(server: FakeServer, tmp_path: Path) -> None:
    """summarize puts the word limit in the system message; the summary is the content."""
    server.responder = lambda r: Reply(content="Short summary.")
    src = write_jsonl(tmp_path / "in.jsonl", TICKETS)
    out = tmp_path / "out.jsonl"
    code, _, stderr = _cli(server, "summarize", str(src), "-o", str(out), "--max-words", "12")
    assert code == 0, stderr
    body = server.requests[0].json
    assert "at most 12 words" in body["messages"][0]["content"]
    assert "response_format" not in body
    assert {line["content"] for line in read_jsonl(out)} == {"Short summary."}


def test_extract_validates_against_the_schema_file(server: FakeServer, tmp_path: Path) -> None:
    """extract sends the schema and writes the object in "parsed"."""
    schema = {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    server.responder = lambda r: Reply(content='```json\n{"order": "NB-1"}\n```')
    src = write_jsonl(tmp_path / "in.jsonl", TICKETS)
    out = tmp_path / "out.jsonl"
    code, _, stderr = _cli(
        server, "extract", str(src), "-o", str(out), "--schema", str(schema_file)
    )
    assert code == 0, stderr
    assert server.requests[0].json["response_format"]["json_schema"]["schema"] == schema
    assert [line["parsed"] for line in read_jsonl(out)] == [{"order": "NB-1"}] * 3


def test_extract_refuses_a_schema_that_is_not_an_object(server: FakeServer, tmp_path: Path) -> None:
    """A schema file that is not a JSON object is a usage error."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text("[1]")
    src = write_jsonl(tmp_path / "in.jsonl", TICKETS)
    code, _, stderr = _cli(
        server, "extract", str(src), "-o", str(tmp_path / "o.jsonl"), "--schema", str(schema_file)
    )
    assert code == 2
    assert "JSON object" in stderr


def test_task_rows_need_text_or_prompt(server: FakeServer, tmp_path: Path) -> None:
    """For the presets a row's text is "text" or "prompt"; anything else is an input error."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "body": "x"}])
    out = tmp_path / "o.jsonl"
    code, _, stderr = _cli(server, "summarize", str(src), "-o", str(out))
    assert code == 2
    assert 'line 1: nothing to send: give "text" or "prompt", or use a template' in stderr
    assert not out.exists()


def test_batch_json_and_schema_options(server: FakeServer, tmp_path: Path) -> None:
    """batch --json asks for a JSON object; --schema for a schema, parsed into "parsed"."""
    server.responder = lambda r: Reply(content='{"ok": true}')
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    code, _, stderr = _cli(server, "batch", str(src), "-o", str(tmp_path / "a.jsonl"), "--json")
    assert code == 0, stderr
    assert server.requests[-1].json["response_format"]["json_schema"]["schema"] == {
        "type": "object"
    }
    assert read_jsonl(tmp_path / "a.jsonl")[0]["parsed"] == {"ok": True}
    schema_file = tmp_path / "s.json"
    schema_file.write_text('{"type": "object", "required": ["ok"]}')
    code, _, stderr = _cli(
        server, "batch", str(src), "-o", str(tmp_path / "b.jsonl"), "--schema", str(schema_file)
    )
    assert code == 0, stderr
    assert read_jsonl(tmp_path / "b.jsonl")[0]["parsed"] == {"ok": True}

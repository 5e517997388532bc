"""Reading batch input: the three row forms, CSV, per-row options, and every input problem
reported with its line number."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from batch_helpers import write_jsonl
from lmlink.batch import BatchInputError, BatchItem, ItemFormat, read_items
from lmlink.batch._input import items_from_rows, template_fields


def _problems(path: Path, fmt: ItemFormat | None = None) -> list[str]:
    with pytest.raises(BatchInputError) as info:
        read_items(path, fmt)
    return [str(p) for p in info.value.problems]


def test_prompt_rows_become_user_messages(tmp_path: Path) -> None:
    """{"id", "prompt"} gives one user message, after the system message if any."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Hi"}])
    (item,) = read_items(path, ItemFormat(system="Be brief."))
    assert item == BatchItem(
        "a",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        {},
        1,
    )


def test_messages_rows_are_kept_and_get_the_system_message(tmp_path: Path) -> None:
    """{"id", "messages"} is sent as given; --system is added unless one is there."""
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    plain = [{"role": "user", "content": "Yo"}]
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "messages": own}, {"id": "b", "messages": plain}]
    )
    a, b = read_items(path, ItemFormat(system="Be brief."))
    assert a.messages == own
    assert b.messages == [{"role": "system", "content": "Be brief."}, *plain]


def test_template_renders_any_fields(tmp_path: Path) -> None:
    """--template renders the row's fields, nested ones included; numbers are formatted."""
    rows = [{"id": "a", "text": "the cat", "meta": {"lang": "en"}, "n": 3}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    (item,) = read_items(path, ItemFormat(template="[{meta[lang]}] {n}: Summarise {text}"))
    assert item.messages == [{"role": "user", "content": "[en] 3: Summarise the cat"}]


def test_per_row_options_are_picked_up(tmp_path: Path) -> None:
    """Rows may set max_tokens, temperature, stop, seed, model; other fields are data."""
    row = {
        "id": "a",
        "prompt": "Hi",
        "max_tokens": 5,
        "temperature": 0.1,
        "stop": ["\n"],
        "seed": 7,
        "model": "m2",
        "note": "ignored",
    }
    (item,) = read_items(write_jsonl(tmp_path / "in.jsonl", [row]))
    assert item.options == {
        "max_tokens": 5,
        "temperature": 0.1,
        "stop": ["\n"],
        "seed": 7,
        "model": "m2",
    }


def test_blank_lines_and_a_bom_are_fine(tmp_path: Path) -> None:
    """A UTF-8 BOM and blank lines do not count as rows; line numbers stay physical."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\n\n  \n{"id": "b", "prompt": "y"}\n')
    items = read_items(path)
    assert [(i.id, i.line) for i in items] == [("a", 1), ("b", 4)]


@pytest.mark.parametrize(
    ("lines", "fmt", "expected"),
    [
        (['{"id": "a", "prompt": "x"}', "{not json"], None, "line 2: not valid JSON"),
        (['{"prompt": "x"}'], None, 'line 1: no "id"'),
        (
            ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'],
            None,
            "line 2: duplicate id 'a' (first on line 1)",
        ),
        (['{"id": 7, "prompt": "x"}'], None, 'line 1: "id" must be a string, not a number (7)'),
        (['{"id": "  ", "prompt": "x"}'], None, 'line 1: "id" is empty'),
        (["[1, 2]"], None, "line 1: expected a JSON object, got an array"),
        (
            ['{"id": "a", "text": "x"}'],
            ItemFormat(template="Do {task} with {text}"),
            "line 1: the template needs field 'task'",
        ),
        (
            ['{"id": "a", "text": "x"}'],
            None,
            'line 1: nothing to send: give "prompt" or "messages"',
        ),
        (
            ['{"id": "a", "prompt": "x", "messages": []}'],
            None,
            'line 1: give "prompt" or "messages", not both',
        ),
        (
            ['{"id": "a", "messages": [{"content": "x"}]}'],
            None,
            'line 1: "messages" item 1 must be an object with a "role"',
        ),
        (['{"id": "a", "prompt": 5}'], None, 'line 1: "prompt" must be a string'),
        (
            ['{"id": "a", "prompt": "x", "max_tokens": "10"}'],
            None,
            'line 1: "max_tokens" must be a positive integer',
        ),
        ([], None, "no items: the input is empty"),
        (
            ['{"id": "a", "text": "x"}'],
            ItemFormat(template="Do {0}"),
            "--template: template fields must be named",
        ),
        (
            ['{"id": "a", "text": "x"}'],
            ItemFormat(template="Do {text"),
            "--template: the template is malformed",
        ),
    ],
    ids=[
        "bad-json",
        "missing-id",
        "duplicate-id",
        "non-string-id",
        "empty-id",
        "not-object",
        "template-field",
        "no-prompt",
        "prompt-and-messages",
        "bad-message",
        "prompt-not-str",
        "bad-option",
        "empty-file",
        "positional-field",
        "malformed-template",
    ],
)
def test_each_input_problem_is_reported_with_its_line(
    tmp_path: Path, lines: list[str], fmt: ItemFormat | None, expected: str
) -> None:
    """Every kind of input problem is named, with the line it is on."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    problems = _problems(path, fmt)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_all_problems_are_collected_not_just_the_first(tmp_path: Path) -> None:
    """A file with several bad rows reports each of them, in order."""
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "x"}\n{oops\n{"prompt": "y"}\n{"id": "a", "prompt": "z"}\n',
        encoding="utf-8",
    )
    assert [p.split(":")[0] for p in _problems(path)] == ["line 2", "line 3", "line 4"]


def test_the_error_message_lists_the_problems_and_pickles(tmp_path: Path) -> None:
    """The exception text has one problem per line, and survives pickling."""
    path = tmp_path / "in.jsonl"
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(BatchInputError) as info:
        read_items(path)
    assert "1 problem in the input, nothing was sent" in str(info.value)
    assert "line 1: not valid JSON" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, BatchInputError)
    assert copy.problems == info.value.problems


def test_csv_rows_with_a_template(tmp_path: Path) -> None:
    """CSV input: the header names the fields; quoted newlines keep line numbers right."""
    path = tmp_path / "in.csv"
    path.write_text('id,text\nr1,"two\nlines"\nr2,plain\n', encoding="utf-8")
    items = read_items(path, ItemFormat(template="Summarise: {text}"))
    assert [(i.id, i.line) for i in items] == [("r1", 2), ("r2", 4)]
    assert items[0].messages[-1]["content"] == "Summarise: two\nlines"


def test_a_csv_cell_as_long_as_a_jsonl_line_is_read(tmp_path: Path) -> None:
    """A 1 MiB document in one CSV cell is read (the csv module's own limit is 128 KiB)."""
    doc = "word " * 200_000
    path = tmp_path / "in.csv"
    path.write_text(f'id,text\nbig,"{doc}"\nsmall,x\n', encoding="utf-8")
    items = read_items(path, ItemFormat(template="{text}"))
    assert [i.id for i in items] == ["big", "small"]
    assert items[0].messages[-1]["content"] == doc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name,text\nx,y\n", "line 1: no 'id' column in the header (columns: name, text)"),
        ("id,text\na,x\na,y\n", "line 3: duplicate id 'a' (first on line 2)"),
        ("id,text\na,x,extra\n", "line 2: 3 fields, but the header has 2"),
        ("", "no items: the input is empty"),
    ],
    ids=["no-id-column", "duplicate", "extra-field", "empty"],
)
def test_csv_problems(tmp_path: Path, text: str, expected: str) -> None:
    """CSV problems are reported like JSONL ones, with line numbers."""
    path = tmp_path / "in.csv"
    path.write_text(text, encoding="utf-8")
    assert _problems(path, ItemFormat(template="{text}")) == [expected]


def test_a_missing_file_is_an_input_problem(tmp_path: Path) -> None:
    """An unreadable input is reported the same way, not as a traceback."""
    assert _problems(tmp_path / "nope.jsonl")[0].startswith("cannot read it")


def test_python_rows_are_numbered_as_items() -> None:
    """Rows given from Python are counted as items, not lines."""
    with pytest.raises(BatchInputError) as info:
        items_from_rows(
            enumerate([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], 1), unit="item"
        )
    assert str(info.value.problems[0]) == "item 2: duplicate id 'a' (first on item 1)"


def test_template_fields_are_the_top_level_names() -> None:
    """Index access counts as its root field; escaped braces are text; an attribute
    (which would render a Python object's repr) is refused."""
    assert template_fields("{a} {b[x]} {c[0]} {{literal}} {a}") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="attribute"):
        template_fields("{a} {b.x}")

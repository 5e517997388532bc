"""Structured output, tools, reasoning and endpoints in the cases real models and servers
produce: JSON among prose, schemas inside other response_format forms, reasoning sent twice,
pydantic and enum tool arguments, credentials in the endpoint URL."""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lmlink
from apis import API
from lmlink._tools import ToolSet, tool_schema
from lmlink.testing import FakeServer, RecordedRequest, Reply

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


@pytest.mark.parametrize(
    "answer",
    [
        '{"a": 1}\n\nThis JSON has the field a.',
        'The answer [final]: {"a": 1}',
        'Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?',
        '  {"a": 1}  ',
    ],
    ids=["prose-after", "brackets-before", "fenced-among-prose", "spaces"],
)
def test_json_among_prose_is_found(api: API, server: FakeServer, answer: str) -> None:
    """A model that wraps its JSON in prose (servers that ignore response_format) still
    gives the object, at the first request."""
    server.enqueue(Reply(content=answer))
    assert api.chat("x", response_format=SCHEMA).parsed == {"a": 1}
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "form",
    [
        {"type": "json_object", "schema": SCHEMA},
        {"type": "json", "value": SCHEMA},
        {"type": "json_schema", "json_schema": {"name": "Thing", "schema": SCHEMA}},
    ],
    ids=["llama.cpp", "tgi", "openai"],
)
def test_a_schema_inside_any_response_format_form_is_enforced(
    api: API, server: FakeServer, form: dict[str, Any]
) -> None:
    """The schema a server-specific form carries is validated like a bare schema: a wrong
    answer is asked again, the right one parsed."""
    server.enqueue(Reply(content='{"b": 1}'), Reply(content='{"a": 2}'))
    assert api.chat("x", response_format=form).parsed == {"a": 2}
    assert len(server.requests) == 2


def test_a_schema_whose_type_is_a_list_is_sent(api: API, server: FakeServer) -> None:
    """``"type": ["object", "null"]`` is a valid schema, not a crash."""
    schema = {"type": ["object", "null"], "properties": {"a": {"type": "integer"}}}
    server.enqueue(Reply(content='{"a": 3}'))
    assert api.chat("x", response_format=schema).parsed == {"a": 3}


def _doubled(request: RecordedRequest) -> Reply:
    # llama.cpp's deepseek-legacy format: reasoning_content, and the <think> block kept.
    return Reply(
        reasoning="Let me think.",
        reasoning_style="reasoning_content",
        content="<think>Let me think.</think>The answer.",
    )


def _separated(request: RecordedRequest) -> Reply:
    return Reply(
        reasoning="User asks about tags.",
        reasoning_style="reasoning_content",
        content="Close the block with </think> and then write the answer.",
    )


@pytest.mark.parametrize(
    ("responder", "content", "reasoning"),
    [
        (_doubled, "The answer.", "Let me think."),
        (_separated, "Close the block with </think> and then write the answer.", None),
    ],
    ids=["think-block-repeats-the-field", "bare-close-tag-is-text"],
)
def test_reasoning_the_server_separated_is_not_split_again(
    api: API,
    server: FakeServer,
    responder: Callable[[RecordedRequest], Reply],
    content: str,
    reasoning: str | None,
) -> None:
    """When the server sends reasoning in its own field, a <think> block in the content only
    repeats it (dropped, not doubled) and a bare </think> is part of the answer."""
    server.responder = responder
    for resp in (api.chat("x"), api.chat_stream("x")):
        assert resp.content == content
        assert resp.reasoning == (reasoning or "User asks about tags.")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def _pydantic() -> Any:
    return pytest.importorskip("pydantic")


def test_pydantic_and_enum_tool_parameters() -> None:
    """A pydantic model parameter keeps its nested definitions resolvable (lifted to the
    root, so the schema validates); arguments arrive as the model and the Enum member."""
    pydantic = _pydantic()
    addr = pydantic.create_model("Addr", city=(str, ...))
    person = pydantic.create_model("Person", name=(str, ...), addr=(addr, ...))
    seen: list[Any] = []

    def visit(who: Any, color: Color, pair: tuple[int, str]) -> str:
        """Visit someone."""
        seen.extend([who, color, pair])
        return "ok"

    # The model is local to this test: hints as objects, not strings that cannot resolve.
    visit.__annotations__ = {"who": person, "color": Color, "pair": tuple[int, str]}

    params = tool_schema(visit)["function"]["parameters"]
    jsonschema = pytest.importorskip("jsonschema")
    args = {"who": {"name": "Ann", "addr": {"city": "Oslo"}}, "color": "red", "pair": [1, "a"]}
    jsonschema.validate(args, params)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**args, "pair": ["a", 1]}, params)
    fn, converted = ToolSet([visit]).prepare(lmlink.ToolCall("c", "visit", json.dumps(args)))  # type: ignore[misc]
    fn(**converted)
    assert isinstance(seen[0], person)
    assert seen[0].addr.city == "Oslo"
    assert seen[1] is Color.RED
    wrong = ToolSet([visit]).prepare(lmlink.ToolCall("c", "visit", '{"color": "green"}'))
    assert isinstance(wrong, str)
    assert "color" in wrong


def test_odd_callables_as_tools() -> None:
    """A functools.partial and a callable object are tools under their function's and
    class's names; a lambda is refused with a clear error; max_steps must be positive."""

    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    class Adder:
        def __call__(self, a: int) -> int:
            """Add one."""
            return a + 1

    assert tool_schema(functools.partial(add, b=1))["function"]["name"] == "add"
    assert tool_schema(Adder())["function"]["name"] == "Adder"
    assert tool_schema(Adder())["function"]["parameters"]["required"] == ["a"]
    with pytest.raises(lmlink.ConfigurationError, match="lambda"):
        tool_schema(lambda x: x)
    with pytest.raises(lmlink.ConfigurationError, match="max_steps"):
        lmlink.Client(endpoint="http://127.0.0.1:9/v1", model="m").run_tools(
            "x", [add], max_steps=0
        )


def test_credentials_in_the_endpoint_become_basic_auth_and_stay_secret(
    server: FakeServer,
) -> None:
    """http://user:pass@host/v1: the request carries Basic auth, and neither the repr, the
    endpoint nor any error shows the password."""
    url = server.url.replace("http://", "http://ann:s3cret-pw@")
    client = lmlink.Client(endpoint=url, model="m", max_retries=0)
    server.enqueue(Reply(content="hi"), Reply.error(400, "bad header: ann:s3cret-pw"))
    assert client.chat("x").content == "hi"
    assert server.requests[0].headers["authorization"] == "Basic YW5uOnMzY3JldC1wdw=="
    assert "s3cret" not in repr(client) + str(client.endpoint)
    with pytest.raises(lmlink.BadRequestError) as info:
        client.chat("y")
    assert "s3cret" not in str(info.value)
    client.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080//", "http://127.0.0.1:8080/"])
def test_endpoint_with_only_slashes_gets_v1(url: str) -> None:
    assert lmlink.Client(endpoint=url).endpoint == "http://127.0.0.1:8080/v1"


def _plain_json_only(request: RecordedRequest) -> Reply:
    """A server that takes only {"type": "json_object"}, without a schema."""
    body = request.json or {}
    rf = body.get("response_format")
    if rf is not None and (rf.get("type") != "json_object" or "schema" in rf):
        return Reply.error(400, "response_format type must be one of text or json_object")
    return Reply(content='{"a": 1}')


def test_a_system_message_is_merged_with_the_schema_instruction(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """Where the schema goes into the prompt (plain JSON mode), it joins the caller's system
    message: chat templates that allow one system message (Mistral, Gemma) refuse two."""
    server.responder = _plain_json_only
    api = make_api()
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "x"}]
    assert api.chat(messages, response_format=SCHEMA).parsed == {"a": 1}
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["response_format"] == {"type": "json_object"}
    systems = [m for m in sent["messages"] if m["role"] == "system"]
    assert len(systems) == 1
    assert systems[0]["content"].startswith("Be terse.")
    assert "JSON schema" in systems[0]["content"]


def _xgrammar(request: RecordedRequest) -> Reply:
    """vLLM refusing one schema's feature, while it takes json_schema in general."""
    rf = (request.json or {}).get("response_format") or {}
    schema = rf.get("json_schema", {}).get("schema", {}) if rf.get("type") == "json_schema" else {}
    if "not" in schema:
        return Reply.error(
            400, "The provided JSON schema contains features not supported by xgrammar."
        )
    return Reply(content='{"a": 1}')


def test_a_schema_specific_refusal_does_not_downgrade_later_calls(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """One schema the grammar engine cannot take falls back to a weaker form for that call
    only; the next schema is sent in the enforcing json_schema form again."""
    server.responder = _xgrammar
    api = make_api()
    odd = {**SCHEMA, "not": {"required": ["b"]}}
    assert api.chat("x", response_format=odd).parsed == {"a": 1}
    assert api.chat("y", response_format=SCHEMA).parsed == {"a": 1}
    last = server.requests[-1].json
    assert last is not None
    assert last["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["servers"], {"LMLINK_DISCOVER_PORTS": "abc"}, "LMLINK_DISCOVER_PORTS"),
        (["servers", "--timeout", "0"], {}, "must be positive"),
        (["chat", "-e", "localhost:8080", "hi"], {}, "must be an http:// or https:// URL"),
    ],
    ids=["bad-ports", "zero-timeout", "endpoint-without-scheme"],
)
def test_cli_setting_errors_are_one_line_not_a_traceback(
    args: list[str], env: dict[str, str], message: str
) -> None:
    from batch_helpers import run_cli

    result = run_cli(args, **env)
    assert result.returncode == 2  # bad settings, as for the batch commands
    assert "Traceback" not in result.stderr
    assert message in result.stderr

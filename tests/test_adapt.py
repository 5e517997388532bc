"""Structured output, tools, reasoning and detection adapt to each server (fake personas)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

import lmlink
from lmlink._adapt import reasoning_params
from lmlink.testing import FakeServer, Reply

if TYPE_CHECKING:
    from apis import API

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["billing", "bug", "other"]}},
    "required": ["label"],
}


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def formats(server: FakeServer) -> list[Any]:
    return [r.json.get("response_format") for r in server.requests if r.json is not None]


@pytest.mark.parametrize(
    ("persona", "form"),
    [
        ("openai", "json_schema"),
        ("llamacpp", "json_schema"),
        ("lmstudio", "json_schema"),
        ("llama-cpp-python", "json_object_schema"),
        ("tgi", "value"),
        ("mlx", "json_schema"),
    ],
)
def test_schema_output_falls_back_and_remembers(
    make_api: Callable[..., API], persona: str, form: str
) -> None:
    """Each server gets a form it accepts; the client remembers it for the next call."""
    with FakeServer(model="m", persona=persona) as srv:
        srv.responder = lambda req: Reply(content='{"label": "bug"}')
        api = make_api(endpoint=srv.url, model="m")
        assert api.chat("Classify: it crashes", response_format=SCHEMA).parsed == {"label": "bug"}
        first = len(srv.requests)
        assert api.chat("again", response_format=SCHEMA).parsed == {"label": "bug"}
        assert len(srv.requests) == first + 1, "the working form was remembered"
        sent = srv.requests[-1].json
        assert sent is not None
        persona_obj = srv.persona
        assert persona_obj is not None
        assert persona_obj.form_of(sent["response_format"]) == form


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_json_mode_on_a_server_that_refuses_json_object(
    make_api: Callable[..., API], streamed: bool
) -> None:
    """LM Studio refuses json_object: "json" mode switches to a permissive json_schema."""
    with FakeServer(model="m", persona="lmstudio") as srv:
        srv.responder = lambda req: Reply(content='{"ok": true}')
        api = make_api(endpoint=srv.url, model="m")
        resp = (api.chat_stream if streamed else api.chat)("x", response_format="json")
        assert resp.content == '{"ok": true}'
        assert formats(srv)[-1]["type"] == "json_schema"


def test_invalid_output_is_asked_again_with_the_errors(api: API, server: FakeServer) -> None:
    """An answer outside the schema is re-asked once, with the validation error."""
    server.enqueue(Reply(content='{"label": "weather"}'), Reply(content='{"label": "other"}'))
    resp = api.chat("x", response_format=SCHEMA)
    assert resp.parsed == {"label": "other"}
    second = server.requests[-1].json
    assert second is not None
    assert second["messages"][-2] == {"role": "assistant", "content": '{"label": "weather"}'}
    assert "weather" in second["messages"][-1]["content"]


def test_reask_count_is_configurable(make_api: Callable[..., API], server: FakeServer) -> None:
    """structured_retries=0 raises at once with the raw text and the errors."""
    api = make_api(structured_retries=0)
    server.enqueue(Reply(content="not json at all"))
    with pytest.raises(lmlink.StructuredOutputError) as info:
        api.chat("x", response_format=SCHEMA)
    assert info.value.raw == "not json at all"
    assert len(info.value.errors) == 1
    assert len(server.requests) == 1


def test_server_that_ignores_constraints_is_still_validated(make_api: Callable[..., API]) -> None:
    """mlx-lm ignores response_format: the answer is still validated and re-asked."""
    with FakeServer(model="m", persona="mlx") as srv:
        srv.enqueue(Reply(content="Sure! It is a bug."), Reply(content='{"label": "bug"}'))
        api = make_api(endpoint=srv.url, model="m")
        assert api.chat("x", response_format=SCHEMA).parsed == {"label": "bug"}


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_refused_stream_options_and_params_are_dropped(
    make_api: Callable[..., API], streamed: bool
) -> None:
    """A proxy refusing stream_options or chat_template_kwargs gets the request without them."""
    with FakeServer(model="m", persona="strict-proxy") as srv:
        api = make_api(endpoint=srv.url, model="m")
        call = api.chat_stream if streamed else api.chat
        assert call("x", reasoning=False).content
        assert call("y", reasoning=False).content
        last = srv.requests[-1].json
        assert last is not None
        assert "chat_template_kwargs" not in last
        assert "stream_options" not in last
        refusals = len(srv.requests) - 2
        assert refusals == (2 if streamed else 1), "each refusal is learned once"


def weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:
    """The current weather in a city.

    Args:
        city: The city name.
        unit: Temperature unit.
    """
    return {"city": city, "temp": 21, "unit": unit}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def paint(color: Color, coats: int | None = None, tags: list[str] | None = None) -> str:
    """Paint the wall."""
    return "done"


def test_function_to_tool_schema() -> None:
    """Signature and docstring become the OpenAI tool definition."""
    tool = lmlink.tool_schema(weather)["function"]
    assert tool["name"] == "weather"
    assert tool["description"] == "The current weather in a city."
    params = tool["parameters"]
    assert params["required"] == ["city"]
    assert params["properties"]["city"] == {"type": "string", "description": "The city name."}
    assert params["properties"]["unit"]["enum"] == ["C", "F"]
    paint_params = lmlink.tool_schema(paint)["function"]["parameters"]["properties"]
    assert paint_params["color"] == {"enum": ["red", "blue"]}
    assert paint_params["coats"] == {"type": "integer"}
    assert paint_params["tags"] == {"type": "array", "items": {"type": "string"}}


def test_tools_are_sent_and_calls_returned(api: API, server: FakeServer) -> None:
    """tools= and tool_choice= go out; tool calls come back parsed."""
    server.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "weather", "arguments": '{"city": "Oslo"}'}])
    )
    resp = api.chat("Weather in Oslo?", tools=[weather], tool_choice="auto")
    sent = server.requests[-1].json
    assert sent is not None
    assert sent["tools"][0]["function"]["name"] == "weather"
    assert sent["tool_choice"] == "auto"
    assert resp.tool_calls[0].name == "weather"


def test_tool_loop_runs_tools_until_an_answer(api: API, server: FakeServer) -> None:
    """run_tools executes each call, sends the results back, and stops at a plain answer."""
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "c1", "name": "weather", "arguments": '{"city": "Oslo"}'},
                {"id": "c2", "name": "nope", "arguments": "{}"},
            ]
        ),
        Reply(content="It is 21 degrees in Oslo."),
    )
    if isinstance(api.client, lmlink.AsyncClient):
        resp = api.run(api.client.run_tools("Weather?", [weather]))  # type: ignore[union-attr]
    else:
        resp = api.client.run_tools("Weather?", [weather])
    assert resp.content == "It is 21 degrees in Oslo."
    messages = server.requests[-1].json["messages"]  # type: ignore[index]
    tool_msgs = [m for m in messages if m["role"] == "tool"]
    assert tool_msgs[0]["tool_call_id"] == "c1"
    assert '"temp": 21' in tool_msgs[0]["content"]
    assert "no tool named" in tool_msgs[1]["content"]


def test_tool_loop_step_limit(api: API, server: FakeServer) -> None:
    """A model that keeps calling tools stops after max_steps turns."""
    server.responder = lambda req: Reply(
        tool_calls=[{"id": "c", "name": "weather", "arguments": '{"city": "X"}'}]
    )
    if isinstance(api.client, lmlink.AsyncClient):
        resp = api.run(api.client.run_tools("x", [weather], max_steps=3))  # type: ignore[union-attr]
    else:
        resp = api.client.run_tools("x", [weather], max_steps=3)
    assert resp.tool_calls
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("reasoning", "kind", "expected"),
    [
        (False, "ollama", {"reasoning_effort": "none"}),
        ("high", "ollama", {"reasoning_effort": "high"}),
        (False, "vllm", {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            "low",
            "sglang",
            {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"},
        ),
        (True, "llamacpp", {"chat_template_kwargs": {"enable_thinking": True}}),
        ("high", "lmstudio", {"reasoning_effort": "high"}),
        (True, "tgi", {}),
        (None, "vllm", {}),
    ],
)
def test_reasoning_controls_per_server(reasoning: Any, kind: str, expected: dict[str, Any]) -> None:
    """reasoning= maps to what each server understands."""
    assert reasoning_params(reasoning, kind) == expected


def test_bad_reasoning_value() -> None:
    """An unknown reasoning value is a ConfigurationError naming the choices."""
    with pytest.raises(lmlink.ConfigurationError, match="effort"):
        reasoning_params("extreme", None)


@pytest.mark.parametrize(
    "persona",
    [
        "ollama",
        "vllm",
        "llamacpp",
        "lmstudio",
        "sglang",
        "tgi",
        "mlx",
        "llama-cpp-python",
        "openai",
    ],
)
def test_server_info_identifies_the_server(make_api: Callable[..., API], persona: str) -> None:
    """server_info() tells the kind from /v1/models, headers and GET /."""
    with FakeServer(model="m", persona=persona) as srv:
        api = make_api(endpoint=srv.url, model="m")
        call = api.client.server_info
        info = api.run(call()) if api.kind == "async" else call()
        assert info.kind == persona
        assert info.models == ["m"]


def test_discover_finds_servers_on_given_ports() -> None:
    """discover() probes ports at once and reports what answers, with kind and models."""
    import asyncio

    with FakeServer(model="m1", persona="ollama") as a, FakeServer(model="m2") as b:
        closed = FakeServer()
        closed.start()
        dead_port = closed.port
        closed.stop()
        ports = [a.port, dead_port, b.port]
        found = lmlink.discover(ports=ports)
        assert [(s.endpoint, s.kind, s.models) for s in found] == [
            (a.url, "ollama", ["m1"]),
            (b.url, "unknown", ["m2"]),
        ]
        again = asyncio.run(lmlink.adiscover(ports=ports))
        assert [s.endpoint for s in again] == [a.url, b.url]


def test_wait_ready_waits_for_loading(make_api: Callable[..., API], server: FakeServer) -> None:
    """wait_ready() returns once a loading server answers healthy."""
    server.set_loading(0.4)
    api = make_api()
    call = api.client.wait_ready
    info = api.run(call(10)) if api.kind == "async" else call(10)
    assert info.models == ["fake-model"]
    assert not server.loading


def test_wait_ready_times_out(make_api: Callable[..., API]) -> None:
    """wait_ready() on a server that never comes raises APITimeoutError."""
    closed = FakeServer()
    closed.start()
    url = closed.url
    closed.stop()
    api = make_api(endpoint=url)
    call = api.client.wait_ready
    with pytest.raises(lmlink.APITimeoutError):
        api.run(call(0.5)) if api.kind == "async" else call(0.5)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_endpoint_uses_discovery(
    monkeypatch: pytest.MonkeyPatch, server: FakeServer, kind: str
) -> None:
    """With no endpoint configured, the first server discovered (and its model) is used."""
    import asyncio

    monkeypatch.delenv("LMLINK_NO_DISCOVERY", raising=False)
    monkeypatch.setenv("LMLINK_DISCOVER_PORTS", str(server.port))
    server.enqueue(Reply(content="found you"))
    if kind == "sync":
        with lmlink.Client() as client:
            assert client.chat("hi").content == "found you"
            assert client.endpoint == server.url
    else:

        async def go() -> str:
            async with lmlink.AsyncClient() as aclient:
                return (await aclient.chat("hi")).content

        assert asyncio.run(go()) == "found you"


def test_known_server_kind_skips_the_refused_form(make_api: Callable[..., API]) -> None:
    """After server_info(), the first schema request already uses the server's own form."""
    with FakeServer(model="m", persona="llama-cpp-python") as srv:
        srv.responder = lambda req: Reply(content='{"label": "bug"}')
        api = make_api(endpoint=srv.url, model="m")
        call = api.client.server_info
        assert (api.run(call()) if api.kind == "async" else call()).kind == "llama-cpp-python"
        before = len(srv.requests)
        assert api.chat("x", response_format=SCHEMA).parsed == {"label": "bug"}
        assert len(srv.requests) == before + 1

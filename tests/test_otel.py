"""lmlink.otel: one span per call following the GenAI semantic conventions, the GenAI client
metrics, streams whose span ends with the stream, and instrument/uninstrument, all through
real HTTP against the fake server, sync and async."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import lmlink
import lmlink._observe
import lmlink.otel
from apis import API, AsyncAPI
from lmlink.testing import EmbedSettings, FakeServer, Reply, sensible_reply


class Telemetry:
    """An SDK tracer and meter provider, with what they recorded."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self) -> ReadableSpan:
        (span,) = self.spans()
        return span

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def unit(self, name: str) -> str:
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric.unit or ""
        raise AssertionError(f"no metric {name}")


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    """lmlink instrumented with fresh SDK providers for the test, uninstrumented after."""
    telemetry = Telemetry()
    lmlink.otel.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield telemetry
    lmlink.otel.uninstrument()


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def _common(span: ReadableSpan, server: FakeServer) -> None:
    attrs = span.attributes or {}
    assert span.name == "chat fake-model"
    assert span.kind is SpanKind.CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "fake-model"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == server.port


def test_plain_chat_is_one_span_with_the_conventions_attributes(
    otel: Telemetry, api: API, server: FakeServer
) -> None:
    """A plain chat gives one ended CLIENT span named ``chat {model}`` with the request
    settings, the response model, id, finish reasons and usage the server reported."""
    server.enqueue(Reply(content="hello there friend", usage=(7, 3)))
    resp = api.chat("hi", max_tokens=20, temperature=0.5)
    span = otel.span()
    _common(span, server)
    attrs = span.attributes or {}
    assert attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.response.model"] == "fake-model"
    assert attrs["gen_ai.response.id"] == resp.raw["id"]
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert "error.type" not in attrs
    assert span.status.status_code is StatusCode.UNSET


def test_settings_not_given_are_not_reported(otel: Telemetry, api: API) -> None:
    """max_tokens / temperature appear only when the call set them; n=1 is no choice count."""
    api.chat("hi")
    attrs = otel.span().attributes or {}
    assert "gen_ai.request.max_tokens" not in attrs
    assert "gen_ai.request.temperature" not in attrs
    assert "gen_ai.request.choice.count" not in attrs


def test_more_settings_and_choices(otel: Telemetry, api: API) -> None:
    """top_p, seed, stop and n go on the span under their convention names; each choice
    gives a finish reason."""
    api.chat("hi", top_p=0.9, seed=7, stop=["END"], n=2)
    attrs = otel.span().attributes or {}
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.request.seed"] == 7
    assert attrs["gen_ai.request.stop_sequences"] == ("END",)
    assert attrs["gen_ai.request.choice.count"] == 2
    assert attrs["gen_ai.response.finish_reasons"] == ("stop", "stop")


def test_model_named_in_the_call_names_the_span(otel: Telemetry, api: API) -> None:
    """The span is named after the model the call asked for, the response model is the
    one the server answered with."""
    api.chat("hi", model="other-model")
    span = otel.span()
    assert span.name == "chat other-model"
    assert (span.attributes or {})["gen_ai.request.model"] == "other-model"


def test_span_is_a_child_of_the_current_span(otel: Telemetry, api: API) -> None:
    """A call made inside a span of the caller's is that span's child, plain and streamed."""
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("job") as parent:
        api.chat("hi")
        api.stream("hi")
    chats = [s for s in otel.spans() if s.name.startswith("chat ")]
    assert len(chats) == 2
    for span in chats:
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id


def test_failed_chat_span_has_error_type(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A call that fails ends its span with status ERROR, error.type the lmlink error's
    public name, and the exception recorded as an event."""
    server.enqueue(Reply.error(400, "bad things"))
    with pytest.raises(lmlink.BadRequestError):
        api.chat("hi")
    span = otel.span()
    _common(span, server)
    assert (span.attributes or {})["error.type"] == "lmlink.BadRequestError"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_retries_stay_in_one_span(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A call retried after a 503 is still one span, which ends in success."""
    server.enqueue(Reply.error(503, retry_after=0), Reply(content="ok"))
    assert api.chat("hi").content == "ok"
    assert len(server.requests) == 2
    span = otel.span()
    assert "error.type" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET


def test_stream_read_to_the_end(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A stream's span carries the same attributes as a plain call's, usage included."""
    server.enqueue(Reply(content="one two three four five six", chunk_chars=4, usage=(5, 6)))
    deltas, _ = api.stream("hi", max_tokens=30)
    assert "".join(deltas) == "one two three four five six"
    span = otel.span()
    _common(span, server)
    attrs = span.attributes or {}
    assert attrs["gen_ai.request.max_tokens"] == 30
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.response.model"] == "fake-model"


def test_stream_span_ends_when_the_stream_ends(otel: Telemetry, server: FakeServer) -> None:
    """The span is over once the last event is read, before the caller leaves the block."""
    server.enqueue(Reply(content="a b c d", chunk_chars=2))
    with lmlink.Client(endpoint=server.url, model="fake-model") as client:
        with client.stream("hi") as s:
            text = "".join(s)
            assert len(otel.spans()) == 1
        assert text == "a b c d"
    assert len(otel.spans()) == 1


def test_stream_left_early_ends_its_span(otel: Telemetry, api: API, server: FakeServer) -> None:
    """Breaking out of a stream ends the span without an error and without a finish reason."""
    server.enqueue(Reply(content="one two three four five six seven", chunk_chars=2, delay=0.01))
    deltas, _ = api.stream("hi", take=1)
    assert len(deltas) == 1
    span = otel.span()
    attrs = span.attributes or {}
    assert "gen_ai.response.finish_reasons" not in attrs
    assert "error.type" not in attrs
    assert span.status.status_code is StatusCode.UNSET


def test_stream_cut_mid_way_fails_its_span(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A stream whose connection dies after output was read ends its span with the error."""
    server.enqueue(Reply(content="one two three four five six", chunk_chars=3, cut_after=3))
    with pytest.raises(lmlink.StreamError):
        api.stream("hi")
    span = otel.span()
    assert (span.attributes or {})["error.type"] == "lmlink.APIConnectionError"
    assert span.status.status_code is StatusCode.ERROR


def test_stream_refused_before_output_fails_its_span(
    otel: Telemetry, api: API, server: FakeServer
) -> None:
    """A stream that cannot start (a 404 for the model) fails its one span."""
    server.enqueue(Reply.error(404, "no such model"))
    with pytest.raises(lmlink.NotFoundError):
        api.stream("hi")
    assert (otel.span().attributes or {})["error.type"] == "lmlink.NotFoundError"


def test_callers_exception_in_a_stream_block_ends_the_span(
    otel: Telemetry, server: FakeServer
) -> None:
    """An exception of the caller's own that leaves a stream's block ends the span with it."""
    server.enqueue(Reply(content="one two three four five", chunk_chars=2))

    def read_one_then_raise(client: lmlink.Client) -> None:
        with client.stream("hi") as s:
            next(iter(s))
            raise KeyError("mine")

    with lmlink.Client(endpoint=server.url, model="fake-model") as client, pytest.raises(KeyError):
        read_one_then_raise(client)
    span = otel.span()
    assert (span.attributes or {})["error.type"] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR


def test_async_stream_cancelled_ends_the_span(otel: Telemetry, server: FakeServer) -> None:
    """An async stream cancelled while it waits ends its span, error.type the cancellation."""
    server.enqueue(Reply(content="one two three", stall_after=2))

    async def go() -> None:
        async with lmlink.AsyncClient(endpoint=server.url, model="fake-model") as client:

            async def read() -> None:
                async with client.stream("hi") as s:
                    async for _ in s:
                        pass

            task = asyncio.create_task(read())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    span = otel.span()
    assert (span.attributes or {})["error.type"] == "asyncio.exceptions.CancelledError"


def test_metrics(otel: Telemetry, api: API, server: FakeServer) -> None:
    """With a meter provider: one duration point per call (seconds, error.type on failure)
    and token usage points by token type, with the conventions' bucket boundaries."""
    server.enqueue(Reply(content="a b c", usage=(4, 3)), Reply.error(400))
    api.chat("hi")
    with pytest.raises(lmlink.BadRequestError):
        api.chat("hi")
    assert otel.unit("gen_ai.client.operation.duration") == "s"
    assert otel.unit("gen_ai.client.token.usage") == "{token}"
    durations = otel.points("gen_ai.client.operation.duration")
    ok = [p for p in durations if "error.type" not in p.attributes]
    failed = [p for p in durations if "error.type" in p.attributes]
    assert [p.count for p in ok] == [1]
    assert [p.count for p in failed] == [1]
    assert failed[0].attributes["error.type"] == "lmlink.BadRequestError"
    assert ok[0].attributes["gen_ai.operation.name"] == "chat"
    assert ok[0].attributes["gen_ai.response.model"] == "fake-model"
    assert ok[0].attributes["server.port"] == server.port
    assert ok[0].explicit_bounds[:3] == (0.01, 0.02, 0.04)
    assert ok[0].sum > 0
    tokens = {
        p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")
    }
    assert set(tokens) == {"input", "output"}
    assert tokens["input"].sum == 4
    assert tokens["output"].sum == 3
    assert tokens["input"].explicit_bounds[:3] == (1, 4, 16)


def test_no_usage_no_token_points(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A server that reports no usage gives no token usage points and no usage attributes."""
    server.enqueue(Reply(content="a b c", usage=None))
    api.chat("hi")
    assert otel.points("gen_ai.client.token.usage") == []
    assert "gen_ai.usage.input_tokens" not in (otel.span().attributes or {})


def test_instrument_twice_is_harmless(otel: Telemetry, api: API) -> None:
    """A second instrument() changes nothing: still one span per call, to the first providers."""
    other = Telemetry()
    lmlink.otel.instrument(tracer_provider=other.tracer_provider)
    api.chat("hi")
    assert len(otel.spans()) == 1
    assert other.spans() == []


def test_uninstrument_stops_and_reinstrument_starts(
    make_api: Callable[..., API],
) -> None:
    """After uninstrument() calls make no spans; instrument() again starts over; calling
    uninstrument() when not instrumented does nothing."""
    api = make_api()
    lmlink.otel.uninstrument()
    before = list(lmlink._observe.observers)
    telemetry = Telemetry()
    lmlink.otel.instrument(tracer_provider=telemetry.tracer_provider)
    assert lmlink.otel.is_instrumented()
    api.chat("one")
    lmlink.otel.uninstrument()
    lmlink.otel.uninstrument()
    assert not lmlink.otel.is_instrumented()
    assert lmlink._observe.observers == before  # the seam is as it was: empty, the fast path
    api.chat("two")
    api.stream("three")
    assert len(telemetry.spans()) == 1
    lmlink.otel.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        api.stream("four")
    finally:
        lmlink.otel.uninstrument()
    assert len(telemetry.spans()) == 2


def test_a_failing_tracer_never_breaks_a_call(
    api: API, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracer whose spans cannot be started or ended leaves every call unharmed (the
    failure is logged), plain and streamed."""

    class BrokenSpan:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("broken span")

    class BrokenTracer:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs["attributes"]["gen_ai.request.model"] == "other-model":
                raise RuntimeError("broken tracer")
            return BrokenSpan()

    class BrokenProvider(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            return BrokenTracer()

    lmlink.otel.instrument(tracer_provider=BrokenProvider())
    try:
        assert api.chat("hi").content
        assert api.chat("hi", model="other-model").content
        deltas, _ = api.stream("hi")
        assert deltas
        server.enqueue(Reply.error(400))
        with pytest.raises(lmlink.BadRequestError):
            api.chat("hi")
    finally:
        lmlink.otel.uninstrument()
    assert "an observer failed" in caplog.text


def test_import_lmlink_does_not_import_opentelemetry() -> None:
    """``import lmlink`` (and the client's first call path) leaves opentelemetry unloaded;
    ``import lmlink.otel`` alone does too, until instrument() runs."""
    code = (
        "import sys, lmlink, lmlink.otel\n"
        "c = lmlink.Client(endpoint='http://127.0.0.1:9/v1', model='m')\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'loaded'\n"
        "lmlink.otel.instrument()\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _embed(api: API, *args: Any, **kwargs: Any) -> Any:
    if isinstance(api, AsyncAPI):
        return api.run(api.client.embed(*args, **kwargs))
    return api.client.embed(*args, **kwargs)


def test_embeddings_span(otel: Telemetry, api: API, server: FakeServer) -> None:
    """embed() is one span ``embeddings {model}`` with the dimensions asked for, the
    response model and the input tokens; its duration and input-token points are recorded."""
    e = _embed(api, ["a cat", "a big dog"], dimensions=8)
    assert len(e.vectors) == 2
    span = otel.span()
    attrs = span.attributes or {}
    assert span.name == "embeddings fake-model"
    assert span.kind is SpanKind.CLIENT
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.request.model"] == "fake-model"
    assert attrs["gen_ai.embeddings.dimension.count"] == 8
    assert attrs["gen_ai.usage.input_tokens"] == e.prompt_tokens == 5
    assert attrs["gen_ai.response.model"] == "fake-model"
    assert attrs["server.port"] == server.port
    assert "gen_ai.usage.output_tokens" not in attrs
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["gen_ai.operation.name"] == "embeddings"
    tokens = otel.points("gen_ai.client.token.usage")
    assert [(p.attributes["gen_ai.token.type"], p.sum) for p in tokens] == [("input", 5)]


def test_embeddings_failure(otel: Telemetry, api: API, server: FakeServer) -> None:
    """An embed() the server refuses (a text too long, as the fake server says it) fails
    its span with the error's kind."""
    server.embed = EmbedSettings(fail_on="BAD")
    with pytest.raises(lmlink.ContextLengthError):
        _embed(api, ["fine", "BAD text"], model="embedder", encoding_format="float")
    span = otel.span()
    assert span.name == "embeddings embedder"
    attrs = span.attributes or {}
    assert attrs["error.type"] == "lmlink.ContextLengthError"
    assert attrs["gen_ai.request.encoding_formats"] == ("float",)


def test_without_opentelemetry_instrument_says_what_to_install() -> None:
    """Without opentelemetry installed, instrument() is a ConfigurationError naming the
    extra, and lmlink itself works as before."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "import lmlink, lmlink.otel\n"
        "try:\n"
        "    lmlink.otel.instrument()\n"
        "except lmlink.ConfigurationError as exc:\n"
        "    assert \"pip install 'lmlink[otel]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert not lmlink.otel.is_instrumented()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _Ticket(pydantic.BaseModel):
    label: str


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "object", "properties": {"label": {"type": "string"}}}, "json"),
        (_Ticket, "json"),
        ("json", "json"),
        ({"type": "json_object"}, "json"),
        (None, None),
    ],
    ids=["schema", "pydantic", "json", "json-object", "none"],
)
def test_output_type_follows_response_format(
    otel: Telemetry, make_api: Callable[..., API], response_format: Any, expected: str | None
) -> None:
    """gen_ai.output.type (conditionally required when the request asks for an output
    format) is "json" for every JSON response_format, absent without one."""
    with FakeServer(model="fake-model", responder=sensible_reply) as srv:
        api = make_api(endpoint=srv.url)
        api.chat('Label this: {"label": "x"}', response_format=response_format)
    attrs = otel.span().attributes or {}
    assert attrs.get("gen_ai.output.type") == expected


def test_stream_reports_time_to_first_chunk(otel: Telemetry, api: API, server: FakeServer) -> None:
    """A streamed call is marked gen_ai.request.stream and carries the time to its first
    chunk, as a span attribute and as a time_to_first_chunk point (seconds, the duration
    buckets); the time is the answer's own ttft_s and within the call's duration."""
    server.enqueue(Reply(content="one two three four", chunk_chars=4, delay=0.005))
    resp = api.chat_stream("hi")
    attrs = otel.span().attributes or {}
    assert attrs["gen_ai.request.stream"] is True
    assert resp.ttft_s is not None
    assert attrs["gen_ai.response.time_to_first_chunk"] == resp.ttft_s
    assert otel.unit("gen_ai.client.operation.time_to_first_chunk") == "s"
    (point,) = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert point.count == 1
    assert point.sum == pytest.approx(resp.ttft_s)
    assert point.explicit_bounds[:3] == (0.01, 0.02, 0.04)
    assert point.attributes["gen_ai.operation.name"] == "chat"
    assert point.attributes["gen_ai.response.model"] == "fake-model"
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert 0 < point.sum <= duration.sum


def test_plain_call_reports_no_time_to_first_chunk(otel: Telemetry, api: API) -> None:
    """Not streamed: gen_ai.request.stream is false and no first-chunk time is reported
    (the conventions say it SHOULD NOT be for a plain answer)."""
    api.chat("hi")
    attrs = otel.span().attributes or {}
    assert attrs["gen_ai.request.stream"] is False
    assert "gen_ai.response.time_to_first_chunk" not in attrs
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []


def test_stream_without_output_reports_no_first_chunk(
    otel: Telemetry, api: API, server: FakeServer
) -> None:
    """A stream refused before any output has no first chunk to report."""
    server.enqueue(Reply.error(400))
    with pytest.raises(lmlink.BadRequestError):
        api.chat_stream("hi")
    assert "gen_ai.response.time_to_first_chunk" not in (otel.span().attributes or {})
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []


def test_embeddings_span_has_no_stream_attribute(otel: Telemetry, api: API) -> None:
    """gen_ai.request.stream belongs to chat spans only."""
    if isinstance(api, AsyncAPI):
        api.run(api.client.embed(["a"]))
    else:
        api.client.embed(["a"])
    assert "gen_ai.request.stream" not in (otel.span().attributes or {})


def test_userinfo_in_the_endpoint_never_reaches_a_span(
    otel: Telemetry, make_api: Callable[..., API], server: FakeServer
) -> None:
    """server.address is the host alone: no user:password@ from the endpoint, on the span
    or in its status when the call fails."""
    server.enqueue(Reply.error(401, "no"))
    api = make_api(endpoint=server.url.replace("http://", "http://alice:pw-secret@"))
    with pytest.raises(lmlink.AuthenticationError):
        api.chat("hi")
    span = otel.span()
    assert (span.attributes or {})["server.address"] == "127.0.0.1"
    shown = repr(dict(span.attributes or {})) + str(span.status.description)
    shown += repr([dict(e.attributes or {}) for e in span.events])
    assert "pw-secret" not in shown
    assert "alice" not in shown

"""OpenTelemetry for lmlink: a span per call, and the GenAI client metrics.

>>> import lmlink.otel
>>> lmlink.otel.instrument()                  # the global tracer and meter providers
>>> lmlink.otel.instrument(tracer_provider=tp, meter_provider=mp)   # or your own
>>> lmlink.otel.uninstrument()

Needs ``pip install 'lmlink[otel]'`` (opentelemetry-api); ``import lmlink`` never imports
OpenTelemetry, and ``import lmlink.otel`` only does when :func:`instrument` runs.

Every ``chat`` call, streamed or not, sync or async, becomes one span of kind CLIENT that
follows the OpenTelemetry GenAI semantic conventions: named ``chat {model}``, with
``gen_ai.operation.name``, ``gen_ai.provider.name`` (``"openai"``: the API the servers
speak; ``server.address`` tells which server it was), ``gen_ai.request.model``, the request
settings that were given (``gen_ai.request.max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop_sequences``, ``frequency_penalty``, ``presence_penalty``,
``choice.count`` when ``n`` is not 1), ``gen_ai.output.type`` (``json`` when a
``response_format`` asks for JSON), ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons`` (one per choice), ``gen_ai.usage.input_tokens`` /
``output_tokens`` (when the server reported usage), ``server.address`` / ``server.port``.
Retries stay inside the one span. A stream's span ends when the stream does: at its last
event, at an error, or when the caller leaves it early (then with what had arrived, no
finish reason). ``embed`` calls are spans named ``embeddings {model}``, with
``gen_ai.embeddings.dimension.count`` (``dimensions=``), ``gen_ai.request.encoding_formats``
and the input tokens.

A call that ends in an exception gets the status ERROR, the exception as an event, and
``error.type``: for lmlink's own errors their public name (``lmlink.RateLimitError``,
``lmlink.APITimeoutError``, ...), for any other exception (one raised by the caller inside a
stream's block, a cancellation) its qualified class name.

A streamed call also has ``gen_ai.request.stream`` and, once text, reasoning or a tool
call arrived, ``gen_ai.response.time_to_first_chunk`` (seconds from sending the request).

With a meter provider (the global one unless given), histograms with the conventions'
bucket boundaries: ``gen_ai.client.operation.duration`` (seconds, every call, ``error.type``
on failures), ``gen_ai.client.token.usage`` (``gen_ai.token.type`` ``input`` /
``output``, when the server reported them) and, for streams that received output,
``gen_ai.client.operation.time_to_first_chunk``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _observe
from ._errors import ConfigurationError, LMLinkError
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["instrument", "is_instrumented", "uninstrument"]

# The conventions' version whose names (gen_ai.provider.name, ...) these spans use.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
PROVIDER = "openai"

# Bucket boundaries the GenAI metric conventions ask for.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip

# Request settings as the conventions name them.
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}

_lock = threading.Lock()
_installed: _OtelObserver | None = None


def instrument(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Trace every lmlink call from now on (and record the GenAI metrics), with the given
    providers or OpenTelemetry's global ones. Calling it again while instrumented changes
    nothing (call :func:`uninstrument` first to switch providers).

    >>> lmlink.otel.instrument(tracer_provider=provider)
    """
    global _installed  # noqa: PLW0603 - one process-wide switch, like the global providers
    try:
        from opentelemetry import metrics, trace
    except ImportError as exc:
        raise ConfigurationError(
            "lmlink.otel needs OpenTelemetry: pip install 'lmlink[otel]'"
        ) from exc
    with _lock:
        if _installed is not None:
            return
        tracer = trace.get_tracer("lmlink", __version__, tracer_provider, schema_url=SCHEMA_URL)
        meter = metrics.get_meter("lmlink", __version__, meter_provider, schema_url=SCHEMA_URL)
        duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed answer.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        _installed = _OtelObserver(tracer, duration, tokens, first_chunk)
        _observe.observers.append(_installed)


def uninstrument() -> None:
    """Stop tracing: calls go back to costing nothing extra. Harmless when not instrumented."""
    global _installed
    with _lock:
        if _installed is None:
            return
        observer, _installed = _installed, None
        _observe.observers[:] = [o for o in _observe.observers if o is not observer]


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in force."""
    return _installed is not None


def error_type(exc: BaseException) -> str:
    """``error.type`` of ``exc``: ``lmlink.X`` for lmlink's errors (X its public class; an
    error reported inside a stream counts as its kind: ``lmlink.APIConnectionError``, not
    the ``StreamAPIConnectionError`` variant), else the class's qualified name (without
    ``builtins.``)."""
    cls = type(exc)
    if isinstance(exc, LMLinkError):
        import lmlink

        public = set(lmlink.__all__)
        for base in cls.__mro__:
            name = base.__name__
            if name in public and (name != "StreamError" or base is cls):
                return f"lmlink.{name}"
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class _OtelObserver:
    """Turns each observed call into a span and metric points."""

    __slots__ = ("client", "duration", "first_chunk", "tokens", "tracer")

    def __init__(
        self, tracer: Tracer, duration: Histogram, tokens: Histogram, first_chunk: Histogram
    ) -> None:
        from opentelemetry.trace import SpanKind

        self.tracer = tracer
        self.duration = duration
        self.tokens = tokens
        self.first_chunk = first_chunk
        self.client = SpanKind.CLIENT

    def start(self, op: _observe.Operation) -> _SpanWatch:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op.name,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": op.model,
            "server.address": op.host,
            "server.port": op.port,
        }
        if op.name == "chat":
            attributes["gen_ai.request.stream"] = op.stream
        params = op.params
        for name, key in _REQUEST_ATTRIBUTES.items():
            value = params.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[key] = value
        stop = params.get("stop")
        if isinstance(stop, str):
            attributes["gen_ai.request.stop_sequences"] = [stop]
        elif isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop):
            attributes["gen_ai.request.stop_sequences"] = list(stop)
        dimensions = params.get("dimensions")
        if isinstance(dimensions, int):
            attributes["gen_ai.embeddings.dimension.count"] = dimensions
        encoding = params.get("encoding_format")
        if isinstance(encoding, str):
            attributes["gen_ai.request.encoding_formats"] = [encoding]
        output = params.get("output_type")
        if isinstance(output, str):
            attributes["gen_ai.output.type"] = output
        n = params.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n != 1:
            attributes["gen_ai.request.choice.count"] = n
        span = self.tracer.start_span(
            f"{op.name} {op.model}", kind=self.client, attributes=attributes
        )
        return _SpanWatch(self, op, span)


class _SpanWatch:
    """One call's span, ended with its result or its failure."""

    __slots__ = ("_observer", "_op", "_span", "_started")

    def __init__(self, observer: _OtelObserver, op: _observe.Operation, span: Span) -> None:
        self._observer = observer
        self._op = op
        self._span = span
        self._started = time.perf_counter()

    def _metric_attributes(self) -> dict[str, Any]:
        op = self._op
        return {
            "gen_ai.operation.name": op.name,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": op.model,
            "server.address": op.host,
            "server.port": op.port,
        }

    def end(self, result: Any) -> None:
        elapsed = time.perf_counter() - self._started
        attributes: dict[str, Any] = {}
        metric = self._metric_attributes()
        model = getattr(result, "model", None)
        if model:
            attributes["gen_ai.response.model"] = metric["gen_ai.response.model"] = model
        raw = getattr(result, "raw", None)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            attributes["gen_ai.response.id"] = raw["id"]
        choices = getattr(result, "choices", None)
        if isinstance(choices, list):
            reasons = [c.finish_reason for c in choices if c.finish_reason is not None]
            if reasons:
                attributes["gen_ai.response.finish_reasons"] = reasons
        usage = {
            "input": getattr(result, "prompt_tokens", None),
            "output": getattr(result, "output_tokens", None),
        }
        for kind, count in usage.items():
            if count is not None:
                attributes[f"gen_ai.usage.{kind}_tokens"] = count
        # Streams only (the conventions: not reported for a plain answer): when the first
        # generated text, reasoning or tool call arrived, from sending the request.
        first = getattr(result, "ttft_s", None) if self._op.stream else None
        if first is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = first
        span = self._span
        span.set_attributes(attributes)  # one call: the SDK locks once per call
        span.end()
        observer = self._observer
        observer.duration.record(elapsed, metric)
        if first is not None:
            observer.first_chunk.record(first, metric)
        for kind, count in usage.items():
            if count is not None:
                observer.tokens.record(count, {**metric, "gen_ai.token.type": kind})

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        elapsed = time.perf_counter() - self._started
        kind = error_type(exc)
        span = self._span
        span.set_attribute("error.type", kind)
        if isinstance(exc, Exception):
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or kind))
        span.end()
        self._observer.duration.record(elapsed, {**self._metric_attributes(), "error.type": kind})

"""The observer seam: how instrumentation (``lmlink.otel``) watches calls without patching
the client.

A module-level list, :data:`observers`, is empty unless something registered; the clients
test it once per call (``if _observe.observers:``), so an uninstrumented call pays for one
attribute lookup and nothing else. When it is not empty, each call is described once, when it
starts, as an :class:`Operation`, and every observer hands back a :class:`Watch` that is told
exactly once how the call ended: :meth:`Watch.end` with the result (a ``ChatResponse``, or
what a stream had received when it was left early) or :meth:`Watch.fail` with the exception
that ended it.

An observer that raises never breaks a call: its error is logged and the call goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ._log import log

if TYPE_CHECKING:
    from ._adapt import ChatPlan

__all__ = [
    "Observer",
    "Operation",
    "Watch",
    "Watches",
    "acall",
    "call",
    "chat_operation",
    "embeddings_operation",
    "observers",
    "start",
]

T = TypeVar("T")

# The request fields an observer may report (GenAI conventions call them request
# attributes); the rest of a body (messages, tools) is not its business.
_REPORTED = ("n", "seed", "top_p", "top_k", "stop", "frequency_penalty", "presence_penalty")


class Operation:
    """One call as it starts: ``name`` (``"chat"``, ``"embeddings"``), the model asked for,
    the URL it goes to (``host`` and ``port`` split out of it), whether it is streamed, and
    the request settings that were given (``max_tokens``, ``temperature``, ``n``, ...)."""

    __slots__ = ("host", "model", "name", "params", "port", "stream", "url")

    def __init__(
        self,
        name: str,
        model: str,
        url: str,
        *,
        stream: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.url = url
        self.stream = stream
        self.params: Mapping[str, Any] = {} if params is None else params
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        self.port = port

    def __repr__(self) -> str:
        return f"Operation({self.name!r}, model={self.model!r}, url={self.url!r})"


class Watch(Protocol):
    """An observer's view of one call; told once how it ended."""

    def end(self, result: Any) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class Observer(Protocol):
    """Something that watches calls: ``lmlink.otel`` registers one."""

    def start(self, op: Operation) -> Watch: ...


# Registered observers. Empty means: not instrumented (the clients test exactly this).
observers: list[Observer] = []


class Watches:
    """The watches of all observers over one call, ended once: the first of :meth:`end` and
    :meth:`fail` counts, later ones are ignored (a stream that failed is then closed)."""

    __slots__ = ("_open", "_watches")

    def __init__(self, watches: list[Watch]) -> None:
        self._watches = watches
        self._open = True

    def end(self, result: Any) -> None:
        if self._open:
            self._open = False
            for watch in self._watches:
                try:
                    watch.end(result)
                except Exception as exc:
                    log.warning("lmlink: an observer failed at the end of a call: %r", exc)

    def fail(self, exc: BaseException) -> None:
        if self._open:
            self._open = False
            for watch in self._watches:
                try:
                    watch.fail(exc)
                except Exception as error:
                    log.warning("lmlink: an observer failed at the end of a call: %r", error)


def start(op: Operation) -> Watches:
    """Tell every observer that ``op`` starts."""
    watches: list[Watch] = []
    for observer in tuple(observers):  # a copy: uninstrument() may run in another thread
        try:
            watches.append(observer.start(op))
        except Exception as exc:
            log.warning("lmlink: an observer failed at the start of a call: %r", exc)
    return Watches(watches)


def chat_operation(plan: ChatPlan, url: str) -> Operation:
    """The :class:`Operation` of a chat call planned as ``plan``, sent to ``url``."""
    spec = plan.spec
    params: dict[str, Any] = {}
    if spec.max_tokens is not None:
        params["max_tokens"] = spec.max_tokens
    if spec.temperature is not None:
        params["temperature"] = spec.temperature
    extra = spec.extra
    if extra:
        for name in _REPORTED:
            value = extra.get(name)
            if value is not None:
                params[name] = value
        if "max_tokens" not in params and extra.get("max_completion_tokens") is not None:
            params["max_tokens"] = extra["max_completion_tokens"]
    output = _output_type(spec.response_format, spec.output is not None)
    if output is not None:
        params["output_type"] = output
    return Operation("chat", spec.model, url, stream=plan.stream, params=params)


def _output_type(response_format: Any, structured: bool) -> str | None:
    """What the call asked the model to answer in: ``"json"`` for any JSON format (a schema,
    a pydantic class, ``"json"``, ``{"type": "json_object"}``), ``"text"`` for an explicit
    ``{"type": "text"}``; None when no format was asked for (or one not known)."""
    if response_format is None:
        return None
    if structured:
        return "json"
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return "text"
    if isinstance(kind, str) and kind.startswith("json"):
        return "json"
    return None


def embeddings_operation(
    url: str, model: str | None, dimensions: int | None, extra: Mapping[str, Any]
) -> Operation:
    """The :class:`Operation` of an ``embed`` call (its model already checked)."""
    params: dict[str, Any] = {}
    if dimensions is not None:
        params["dimensions"] = dimensions
    encoding = extra.get("encoding_format")
    if isinstance(encoding, str):
        params["encoding_format"] = encoding
    return Operation("embeddings", model or "", url, params=params)


def call(op: Operation, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, watched as ``op``."""
    watches = start(op)
    try:
        result = fn(*args)
    except BaseException as exc:
        watches.fail(exc)
        raise
    watches.end(result)
    return result


async def acall(op: Operation, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)``, watched as ``op``."""
    watches = start(op)
    try:
        result = await fn(*args)
    except BaseException as exc:
        watches.fail(exc)
        raise
    watches.end(result)
    return result

"""The multi-step operations of a client, written once as pure drivers.

Each driver is a generator that says what to do next and is told what came of it; the
blocking and asyncio clients run it in a loop of a few lines (``_drive``), doing only the
I/O. A step is either a tuple of :class:`Get` (one round of GET requests, which the asyncio
shell sends at the same time; it sends back a tuple of answers, ``None`` for one that got
no answer) or a :class:`Sleep`.

- :func:`server_info_steps`: identify the server (model list and root page, then the
  version where the kind has one);
- :func:`wait_ready_steps`: poll until the server lists its models and reports healthy,
  backing off, up to a deadline;
- :func:`probe_steps`: one port of :func:`lmlink.discover`.

The tool loop (:class:`ToolLoop`) is a driver too, in object form: it keeps the history,
says which tools to run with which arguments, what each model call is given (the time left
of the loop's one total deadline), and when the loop is over; the shells call the model and
the tools.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._config import Timeout
from ._discovery import Probe, ServerInfo, version_from, version_probe
from ._errors import APITimeoutError, ConfigurationError
from ._wire import MessagesInput, normalize_messages

if TYPE_CHECKING:
    from ._models import ChatResponse, ToolCall
    from ._tools import ToolSet

__all__ = [
    "PROBE_TIMEOUT",
    "Get",
    "Sleep",
    "Steps",
    "ToolLoop",
    "probe_steps",
    "server_info_steps",
    "wait_ready_steps",
]

T = TypeVar("T")

PROBE_TIMEOUT = 1.0


class Get(NamedTuple):
    """GET ``url``, no retries, for at most ``timeout`` seconds."""

    url: str
    timeout: float = PROBE_TIMEOUT


class Sleep(NamedTuple):
    seconds: float


Step = tuple[Get, ...] | Sleep
Steps = Generator[Step, Any, T]


def server_info_steps(endpoint: str) -> Steps[ServerInfo]:
    """Which server answers at ``endpoint``: kind, models and version."""
    probe = Probe(endpoint)
    models, root = yield (Get(probe.models_url), Get(probe.root_url))
    info = probe.info(models, root)
    where = version_probe(info.kind, probe.endpoint)
    if where is not None:
        (answer,) = yield (Get(where[0]),)
        info.version = version_from(answer, where[1])
    return info


def wait_ready_steps(
    endpoint: str, timeout: float, clock: Callable[[], float] = time.monotonic
) -> Steps[ServerInfo]:
    """Poll until the server lists its models and ``/health`` (where there is one) is not
    503; back off from 0.1 s to 2 s; APITimeoutError after ``timeout`` seconds."""
    probe = Probe(endpoint)
    deadline = clock() + timeout

    def wait() -> float:  # one probe: its usual second, or what is left
        return min(PROBE_TIMEOUT, max(deadline - clock(), 0.05))

    pause = 0.1
    while True:  # bounded: by the deadline
        (models,) = yield (Get(probe.models_url, wait()),)
        if models is not None and models[0] == 200:  # else no need to ask /health
            (health,) = yield (Get(probe.health_url, wait()),)
            if probe.ready(models, health):
                return probe.info(models, None)
        if clock() + pause > deadline:
            raise APITimeoutError(
                f"the server at {endpoint} was not ready within {timeout:g} s",
                phase="total",
                timeout=timeout,
            )
        yield Sleep(pause)
        pause = min(pause * 2, 2.0)


def probe_steps(endpoint: str, timeout: float) -> Steps[ServerInfo | None]:
    """The server at ``endpoint`` if one answers with a model list, else None."""
    probe = Probe(endpoint)
    (models,) = yield (Get(probe.models_url, timeout),)
    if models is None:
        return None
    (root,) = yield (Get(probe.root_url, timeout),)
    info = probe.info(models, root)
    return info if info.models else None


class ToolLoop:
    """The tool loop of ``run_tools``: chat, run the tools the model called, report their
    results, until the model answers without a call or ``max_steps`` turns have passed.

    A ``total`` timeout (the call's ``timeout=``, else the client's) bounds the whole loop,
    model turns and tool runs together: each model call gets what is left of it, and a turn
    that would start past it raises :class:`~lmlink.APITimeoutError` (a tool already running
    is not interrupted).

    >>> loop = ToolLoop(messages, tools, max_steps, blocking=True, timeout=client.timeout,
    ...                 kwargs=kwargs)
    >>> while loop.turn():
    ...     resp = client.chat(loop.history, tools=loop.definitions, **loop.kwargs())
    ...     for call, run in loop.calls(resp):
    ...         loop.record(call, run())       # or ToolLoop.failure(exc) if it raised
    >>> loop.result
    """

    __slots__ = (
        "_clock",
        "_deadline",
        "_kwargs",
        "_left",
        "_timeout",
        "blocking",
        "definitions",
        "history",
        "result",
        "toolset",
    )

    def __init__(
        self,
        messages: MessagesInput,
        tools: Sequence[Any],
        max_steps: int,
        *,
        blocking: bool,
        timeout: Timeout | None = None,
        kwargs: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ._tools import ToolSet

        if max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, not {max_steps}")
        self._kwargs = kwargs or {}
        given = self._kwargs.get("timeout")
        self._timeout = Timeout.coerce(given) if given is not None else timeout
        self._clock = clock
        total = None if self._timeout is None else self._timeout.total
        self._deadline = None if total is None else clock() + total
        self.toolset: ToolSet = ToolSet(tools)
        self.definitions = self.toolset.definitions
        self.history = list(normalize_messages(messages))
        self.blocking = blocking
        self.result: ChatResponse | None = None
        self._left = max_steps

    def turn(self) -> bool:
        """Whether the model is to be called (again)."""
        if self._left <= 0 or (self.result is not None and not self.result.tool_calls):
            return False
        self._left -= 1
        return True

    def kwargs(self) -> dict[str, Any]:
        """The keywords of this turn's model call: the loop's own, with a total timeout of
        what is left of the loop's deadline. Raises APITimeoutError once it has passed."""
        deadline = self._deadline
        if deadline is None:
            return self._kwargs
        assert self._timeout is not None
        total = self._timeout.total
        left = deadline - self._clock()
        if left <= 0:
            raise APITimeoutError(
                f"run_tools' total timeout of {total:g} s passed before the model's next turn",
                phase="total",
                timeout=total,
                request_sent=False,
                reason="timeout",
            )
        return {**self._kwargs, "timeout": self._timeout.replace(total=left)}

    def calls(self, resp: ChatResponse) -> Iterator[tuple[ToolCall, Callable[[], Any]]]:
        """The tool calls of ``resp``, each with a callable that runs it."""
        self.result = resp
        if not resp.tool_calls:
            return
        self.history.append(resp.to_message().to_dict())
        for call in resp.tool_calls:
            prepared = self.toolset.prepare(call)
            if isinstance(prepared, str):  # unknown tool or bad arguments: say so
                yield call, _constant(prepared)
                continue
            fn, args = prepared
            if self.blocking:
                import inspect

                if inspect.iscoroutinefunction(fn):
                    raise ConfigurationError(f"tool {call.name} is async: use AsyncClient")
            yield call, _bound(fn, args)

    def record(self, call: ToolCall, result: Any) -> None:
        from ._tools import ToolSet

        self.history.append(ToolSet.result_message(call, result))

    @staticmethod
    def failure(exc: Exception) -> str:
        """What the model is told when a tool raised."""
        return f"error: {type(exc).__name__}: {exc}"

    @property
    def answer(self) -> ChatResponse:
        assert self.result is not None
        return self.result


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _bound(fn: Callable[..., Any], args: dict[str, Any]) -> Callable[[], Any]:
    return lambda: fn(**args)

"""The blocking I/O shell: :class:`Client`, and :func:`discover`. Its twin, ``AsyncClient``,
is in ``_aclient.py``, loaded only when used so that ``import lmlink`` does not pay for
asyncio.

Everything that decides anything lives in the pure core (``_base``, ``_plan``, ``_wire``,
``_stream``, ``_retry``, ``_discovery``, ``_tools``); these classes only send, read and
sleep. The sync and async halves are written line for line in parallel so that they diff
cleanly: change one, change both (``diff _client.py _aclient.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ._base import BaseClient, Call
from ._config import Timeout
from ._discovery import DEFAULT_PORTS, Answer, Probe, ServerInfo, version_from, version_probe
from ._errors import APIStatusError, ConfigurationError, LMLinkError
from ._models import ChatResponse, ModelInfo
from ._retry import RetryState
from ._streaming import ChatStream, Delta, retry_log
from ._transport import Response, SyncTransport
from ._transport_base import Timeouts
from ._wire import MessagesInput, decode_models, normalize_messages

__all__ = ["Client", "discover", "discovery_off", "ports_to_probe", "probe_timeouts"]


T = TypeVar("T")

_PROBE_TIMEOUT = 1.0


def probe_timeouts(seconds: float) -> Timeouts:
    return Timeouts(seconds, seconds, time.monotonic() + seconds)


def probe_wait(deadline: float) -> float:
    """How long one readiness probe may take: its usual second, or what is left."""
    return min(_PROBE_TIMEOUT, max(deadline - time.monotonic(), 0.05))


def discovery_off() -> bool:
    return os.environ.get("LMLINK_NO_DISCOVERY", "").strip() not in ("", "0")


class Client(BaseClient):
    """A blocking client for an OpenAI-compatible server.

    >>> with lmlink.Client(endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b") as client:
    ...     print(client.chat("Say hi in five words").content)

    Settings not given come from ``LMLINK_ENDPOINT`` / ``OPENAI_BASE_URL``, ``LMLINK_MODEL``
    and ``LMLINK_API_KEY`` / ``OPENAI_API_KEY``; with no endpoint at all, the first local
    server :func:`discover` finds is used. ``timeout`` is the idle timeout in seconds, or a
    :class:`Timeout`. Safe to share between threads.
    """

    _transport: SyncTransport
    _sleep: Callable[[float], None]

    def _setup(self) -> None:
        self._transport = SyncTransport(
            verify=self._verify,
            max_connections=self._max_connections,
            max_body=self._max_body,
            redact=self.redact,
        )
        self._sleep = time.sleep

    def chat(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        **extra: Any,
    ) -> ChatResponse:
        """One chat completion, not streamed. Extra keywords go into the request body.

        >>> client.chat([{"role": "user", "content": "2+2?"}], max_tokens=8).content
        """
        self._ensure_endpoint()
        plan = self._plan(
            messages,
            model,
            stream=False,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            tools=tools,
            tool_choice=tool_choice,
            reasoning=reasoning,
            extra=extra,
        )
        started = time.monotonic()
        while True:  # bounded: the plan runs out of fallbacks and re-asks
            try:
                resp = self._send(self._call(plan, started), self._read_chat)
            except APIStatusError as exc:
                if plan.adapt(exc):
                    continue
                raise
            if plan.accept(resp):
                return resp

    def stream(
        self,
        messages: MessagesInput,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        on_delta: Delta | None = None,
        on_reasoning: Delta | None = None,
        **extra: Any,
    ) -> ChatStream:
        """A streamed chat, as a context manager to iterate (see :class:`ChatStream`)."""
        self._ensure_endpoint()
        plan = self._plan(
            messages,
            model,
            stream=True,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            tools=tools,
            tool_choice=tool_choice,
            reasoning=reasoning,
            extra=extra,
        )
        return ChatStream(self, plan, on_delta, on_reasoning)

    def chat_stream(
        self,
        messages: MessagesInput,
        on_delta: Delta | None = None,
        *,
        on_reasoning: Delta | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Stream a chat, calling ``on_delta(text)`` for each content delta; return the
        aggregate. ``on_reasoning`` gets the reasoning deltas.

        >>> resp = client.chat_stream("Tell me a joke", on_delta=lambda t: print(t, end=""))
        """
        with self.stream(messages, on_delta=on_delta, on_reasoning=on_reasoning, **kwargs) as s:
            return s.until_done()

    def run_tools(
        self,
        messages: MessagesInput,
        tools: Sequence[Any],
        *,
        max_steps: int = 8,
        **kwargs: Any,
    ) -> ChatResponse:
        """Chat with tools, running each call the model makes, until it answers without one
        (or ``max_steps`` model turns have passed: then the last response is returned, its
        ``tool_calls`` still set). A tool that raises reports the error back to the model.

        >>> def add(a: int, b: int) -> int:
        ...     "Add two numbers."
        ...     return a + b
        >>> client.run_tools("What is 2+3? Use the tool.", [add]).content
        """
        import inspect  # loaded by _tools anyway; kept off the import path

        from ._tools import ToolSet

        if max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, not {max_steps}")
        toolset = ToolSet(tools)
        history = list(normalize_messages(messages))
        for _ in range(max_steps):
            resp = self.chat(history, tools=toolset.definitions, **kwargs)
            if not resp.tool_calls:
                return resp
            history.append(resp.to_message().to_dict())
            for call in resp.tool_calls:
                prepared = toolset.prepare(call)
                if isinstance(prepared, str):
                    result: Any = prepared
                else:
                    fn, args = prepared
                    if inspect.iscoroutinefunction(fn):
                        raise ConfigurationError(f"tool {call.name} is async: use AsyncClient")
                    try:
                        result = fn(**args)
                    except Exception as exc:
                        result = f"error: {type(exc).__name__}: {exc}"
                history.append(ToolSet.result_message(call, result))
        return resp

    def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``).

        >>> [m.id for m in client.models()]
        """
        self._ensure_endpoint()
        return self._send(self._prepare_get("/models"), self._read_models)

    def server_info(self) -> ServerInfo:
        """Which server this is (kind, version, models) and what calls learned about it.

        >>> client.server_info().kind
        'ollama'
        """
        self._ensure_endpoint()
        probe = Probe(self._url(""))
        info = probe.info(self._get(probe.models_url), self._get(probe.root_url))
        where = version_probe(info.kind, probe.endpoint)
        if where is not None:
            info.version = version_from(self._get(where[0]), where[1])
        return self._learn(info)

    def wait_ready(self, timeout: float = 300.0) -> ServerInfo:
        """Wait until the server answers with a model list and reports itself healthy
        (llama.cpp and SGLang answer 503 while they load); raise APITimeoutError after
        ``timeout`` seconds."""
        self._ensure_endpoint()
        deadline = time.monotonic() + timeout
        wait = 0.1
        while True:  # bounded: by the deadline
            info = self._ready_info(deadline)
            if info is not None:
                return info
            if time.monotonic() + wait > deadline:
                raise self._not_ready(timeout)
            self._sleep(wait)
            wait = min(wait * 2, 2.0)

    def _ready_info(self, deadline: float) -> ServerInfo | None:
        probe = Probe(self._url(""))
        models = self._get(probe.models_url, probe_wait(deadline))
        if models is None or models[0] != 200:
            return None  # no need to ask /health
        health = self._get(probe.health_url, probe_wait(deadline))
        if not probe.ready(models, health):
            return None
        return self._learn(probe.info(models, None))

    def _get(self, url: str, timeout: float = _PROBE_TIMEOUT) -> Answer:
        """One GET, no retries: (status, headers, body), or None if nothing answered."""
        try:
            with self._transport.request(
                "GET", url, self._get_headers, None, probe_timeouts(timeout)
            ) as resp:
                return resp.status, resp.headers, resp.read(1 << 20)
        except LMLinkError:
            return None

    def _ensure_endpoint(self) -> None:
        if self._endpoint is None and not discovery_off():
            found = discover()
            if found:
                self._use_discovered(found[0])

    def _send(self, call: Call, read: Callable[[Call, Response], T]) -> T:
        deadline = self._deadline(call.started)
        state: RetryState | None = None
        while True:  # bounded: state.delay_for raises once the retry budget is spent
            try:
                resp = self._transport.request(
                    call.method, call.url, call.headers, call.body, self._timeouts(deadline)
                )
                with resp:
                    return read(call, resp)
            except LMLinkError as exc:
                self._scrub(exc)
                state = state or self._retry_state(deadline)
                delay = state.delay_for(exc)
                retry_log(state, exc, delay)
                self._sleep(delay)

    def _read_chat(self, call: Call, resp: Response) -> ChatResponse:
        ttft = time.monotonic() - call.started
        body = resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return self._finish_chat(call, body, ttft)

    def _read_models(self, call: Call, resp: Response) -> list[ModelInfo]:
        body = resp.read(self._max_body)
        if resp.status >= 300:
            raise self._status_error(resp.status, resp.headers, body)
        return decode_models(body, self.redact)

    def close(self) -> None:
        """Close every pooled connection."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def ports_to_probe(ports: Sequence[int] | None) -> Sequence[int]:
    if ports is not None:
        return ports
    raw = os.environ.get("LMLINK_DISCOVER_PORTS", "").strip()
    if not raw:
        return DEFAULT_PORTS
    try:
        return [int(p) for p in raw.replace(",", " ").split()]
    except ValueError as exc:
        raise ConfigurationError(f"LMLINK_DISCOVER_PORTS must list port numbers: {raw!r}") from exc


def discover(
    ports: Sequence[int] | None = None, host: str = "127.0.0.1", timeout: float = 0.5
) -> list[ServerInfo]:
    """The OpenAI-compatible servers answering on ``host`` at the usual local ports
    (11434, 1234, 8000, 8080, 9931, 30000, 3000, or ``LMLINK_DISCOVER_PORTS``), probed at
    the same time, in port order, with their kind and models.

    >>> [(s.endpoint, s.kind, s.models) for s in lmlink.discover()]
    [('http://127.0.0.1:11434/v1', 'ollama', ['qwen3:8b'])]
    """

    def probe(port: int) -> ServerInfo | None:
        url = f"http://{url_host(host)}:{port}/v1"
        with Client(endpoint=url, timeout=Timeout(timeout, timeout)) as c:
            p = Probe(c._url(""))
            models = c._get(p.models_url, timeout)
            if models is None:
                return None
            return p.info(models, c._get(p.root_url, timeout))

    from concurrent.futures import ThreadPoolExecutor

    ports = ports_to_probe(ports)
    with ThreadPoolExecutor(max_workers=len(ports) or 1) as pool:
        found = list(pool.map(probe, ports))
    return [f for f in found if f is not None and f.models]

"""The blocking I/O shell: :class:`Client`, and :func:`discover`. Its twin, ``AsyncClient``,
is in ``_aclient.py``, loaded only when used so that ``import lmlink`` does not pay for
asyncio.

Everything that decides anything lives in the pure core: ``_core`` (settings, requests, the
attempt loop's decisions), ``_adapt`` (adapting to refusals, re-asking), ``_answer`` (the
one answer decoder), ``_drivers`` (server info, readiness, discovery probes, the tool loop),
``_retry``. These classes only send, read and sleep, in loops written line for line in
parallel with the async twin (``diff _client.py _aclient.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _observe
from ._config import Timeout
from ._core import Attempts, Call, ClientCore
from ._discovery import DEFAULT_PORTS, Answer, ServerInfo
from ._drivers import (
    PROBE_TIMEOUT,
    Sleep,
    Steps,
    ToolLoop,
    probe_steps,
    server_info_steps,
    wait_ready_steps,
)
from ._errors import ConfigurationError, LMLinkError
from ._http import HTTPResponse, Transport
from ._http.common import Timeouts
from ._http.sync import SyncTransport
from ._models import ChatResponse, ModelInfo
from ._streaming import ChatStream, Delta
from ._tokens import Ask, Reply, ask_call, counting, raw_answer, windowing
from ._wire import MessagesInput

if TYPE_CHECKING:
    from ._embed import Embeddings

__all__ = ["Client", "discover", "discovery_off", "ports_to_probe", "probe_timeouts"]


T = TypeVar("T")


def probe_timeouts(seconds: float) -> Timeouts:
    return Timeouts(seconds, seconds, time.monotonic() + seconds)


def discovery_off() -> bool:
    return os.environ.get("LMLINK_NO_DISCOVERY", "").strip() not in ("", "0")


class Client(ClientCore):
    """A blocking client for an OpenAI-compatible server.

    >>> with lmlink.Client(endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b") as client:
    ...     print(client.chat("Say hi in five words").content)

    Settings not given come from ``LMLINK_ENDPOINT`` / ``OPENAI_BASE_URL``, ``LMLINK_MODEL``
    and ``LMLINK_API_KEY`` / ``OPENAI_API_KEY``; with no endpoint at all, the first local
    server :func:`discover` finds is used. ``timeout`` is the idle timeout in seconds, or a
    :class:`Timeout`. ``proxy="http://proxy:3128"`` or ``trust_env=True`` (``HTTP_PROXY``
    and friends) send requests through a proxy (needs ``lmlink[proxy]``); by default the
    server is reached directly. ``event_hooks={"request": [fn], "response": [fn]}`` shows
    every HTTP request and response head to ``fn`` (httpx's shape; see ``lmlink._hooks``).
    Safe to share between threads, and across ``fork()`` (a child process opens
    connections of its own).
    """

    _transport: Transport
    _sleep: Callable[[float], None]

    def _setup(self) -> None:
        settings = self._transport_settings()
        if self._proxied:
            from ._http.proxy import ProxyTransport

            self._transport = ProxyTransport(
                proxy=self._proxy, trust_env=self._trust_env, **settings
            )
        else:
            self._transport = SyncTransport(redact=self.redact, **settings)
        self._sleep = time.sleep
        if self._hooks is not None:
            self._hooks.refuse_async()

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
        """One chat completion, not streamed. ``timeout=`` (seconds or a Timeout),
        ``headers=`` and ``extra_body=`` (fields merged into the body) apply to this call;
        other extra keywords go into the request body.

        >>> client.chat([{"role": "user", "content": "2+2?"}], max_tokens=8).content
        """
        self._ensure_endpoint()
        plan, options = self._plan(
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
        run = self._attempts(self._chat_call(plan, options), plan)
        if _observe.observers:  # instrumented (lmlink.otel): the one test on the hot path
            return _observe.call(_observe.chat_operation(plan, run.call.url), self._chat, run)
        return self._chat(run)

    def _chat(self, run: Attempts) -> ChatResponse:
        while True:  # bounded: by the retry budget, the plan's fallbacks and re-asks
            try:
                resp = self._send(run.call, self._read_chat)
            except LMLinkError as exc:
                self._sleep(run.failed(exc))
                continue
            if run.accept(resp):
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
        planned = self._plan(
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
        return ChatStream(
            self._stream_context(),
            planned,
            on_delta,
            on_reasoning,
            send=self._open,
            sleep=self._sleep,
        )

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
        A total timeout (``timeout=lmlink.Timeout(total=...)`` here, else the client's) bounds
        the whole loop, tool runs included: each model call gets what is left of it, and
        ``APITimeoutError`` is raised once it has passed.

        >>> def add(a: int, b: int) -> int:
        ...     "Add two numbers."
        ...     return a + b
        >>> client.run_tools("What is 2+3? Use the tool.", [add]).content
        """
        loop = ToolLoop(
            messages, tools, max_steps, blocking=True, timeout=self.timeout, kwargs=kwargs
        )
        while loop.turn():
            resp = self.chat(loop.history, tools=loop.definitions, **loop.kwargs())
            for call, run in loop.calls(resp):
                try:
                    result = run()
                except Exception as exc:
                    result = loop.failure(exc)
                loop.record(call, result)
        return loop.answer

    def models(self) -> list[ModelInfo]:
        """The models the server offers (``GET /models``).

        >>> [m.id for m in client.models()]
        """
        self._ensure_endpoint()
        run = self._attempts(self._get_call("/models"))
        while True:  # bounded: by the retry budget
            try:
                return self._send(run.call, self._read_models)
            except LMLinkError as exc:
                self._sleep(run.failed(exc))

    # -- embeddings ---------------------------------------------------------------------

    def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        **extra: Any,
    ) -> Embeddings:
        """The embedding vectors of ``inputs`` (``POST /embeddings``), in their order.
        ``dimensions`` asks for shorter vectors (models that support it); ``timeout=``,
        ``headers=`` and ``extra_body=`` work as in :meth:`chat`, other keywords go into the
        body (``encoding_format="base64"`` is decoded like the default floats).

        >>> e = client.embed(["a cat", "a dog"], model="nomic-embed-text")
        >>> len(e.vectors), e.prompt_tokens
        (2, 4)
        """
        from ._embed import embed_call

        self._ensure_endpoint()
        call, count = embed_call(self, inputs, model, dimensions, extra)
        run = self._attempts(call)
        if _observe.observers:  # instrumented (lmlink.otel)
            op = _observe.embeddings_operation(call.url, model or self.model, dimensions, extra)
            return _observe.call(op, self._embed, run, count)
        return self._embed(run, count)

    def _embed(self, run: Attempts, count: int) -> Embeddings:
        from ._embed import embed_answer

        while True:  # bounded: by the retry budget
            try:
                with self._open(run.call) as resp:
                    body = resp.read(self._max_body)
                    return embed_answer(self, run.call, resp.status, resp.headers, body, count)
            except LMLinkError as exc:
                self._sleep(run.failed(exc))

    def server_info(self) -> ServerInfo:
        """Which server this is (kind, version, models) and what calls learned about it.

        >>> client.server_info().kind
        'ollama'
        """
        self._ensure_endpoint()
        return self._learn(self._drive(server_info_steps(self._url(""))))

    def wait_ready(self, timeout: float = 300.0) -> ServerInfo:
        """Wait until the server answers with a model list and reports itself healthy
        (llama.cpp and SGLang answer 503 while they load); raise APITimeoutError after
        ``timeout`` seconds."""
        self._ensure_endpoint()
        return self._learn(self._drive(wait_ready_steps(self._url(""), timeout)))

    # -- token counts and the context window (drivers in ``_tokens``) -----------------

    def count_tokens(self, what: str | MessagesInput, *, model: str | None = None) -> int:
        """How many tokens the server's own tokenizer makes of ``what``: a string as plain
        text (with the BOS token a prompt gets), messages as the prompt of a chat call
        (the model's chat template applied by the server). llama.cpp, vLLM, TGI, SGLang
        and llama-cpp-python have a tokenizer endpoint (the last two count text only);
        other servers raise UnsupportedError. The endpoint that worked is remembered.

        >>> client.count_tokens("Hello world")
        3
        """
        self._ensure_endpoint()
        return self._converse(counting(self, what, model))

    def context_length(self, model: str | None = None) -> int | None:
        """The model's context window in tokens, as the server tells it (vLLM/SGLang
        ``max_model_len``, llama.cpp ``/props``, Ollama ``/api/ps`` or ``/api/show``, LM
        Studio's model list, TGI ``/info``), or None when it does not say.

        >>> client.context_length()
        8192
        """
        self._ensure_endpoint()
        return self._converse(windowing(self, model))

    def _converse(self, steps: Generator[Ask, Reply, T]) -> T:
        """Run a driver of ``_tokens``: its requests one after another."""
        reply: Any = None
        while True:  # bounded: by the driver
            try:
                ask = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            run = self._attempts(ask_call(self, ask))
            while True:  # bounded: by the retry budget
                try:
                    reply = self._send(run.call, self._read_raw)
                    break
                except LMLinkError as exc:
                    self._sleep(run.failed(exc))

    def _read_raw(self, call: Call, resp: HTTPResponse) -> Reply:
        return raw_answer(self, resp.status, resp.headers, resp.read(self._max_body))

    def _drive(self, steps: Steps[T]) -> T:
        """Run a driver of ``_drivers``: its GETs one after another, its sleeps."""
        answer: Any = None
        while True:  # bounded: by the driver
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Sleep):
                self._sleep(step.seconds)
                answer = None
            else:
                answer = tuple(self._get(get.url, get.timeout) for get in step)

    def _get(self, url: str, timeout: float = PROBE_TIMEOUT) -> Answer:
        """One GET, no retries: (status, headers, body), or None if nothing answered."""
        try:
            if self._hooks is not None:
                resp = self._hooked("GET", url, self._get_headers, None, probe_timeouts(timeout))
            else:
                resp = self._transport.request(
                    "GET", url, self._get_headers, None, probe_timeouts(timeout)
                )
            with resp:
                self._answered = True
                return resp.status, resp.headers, resp.read(1 << 20)
        except LMLinkError:
            return None

    def _ensure_endpoint(self) -> None:
        if self._endpoint is None and not discovery_off():
            self._use_discovered(discover())

    def _open(self, call: Call) -> HTTPResponse:
        """Send ``call``; return once the response head has arrived."""
        if self._hooks is not None:
            return self._hooked(call.method, call.url, call.headers, call.body, call.timeouts())
        resp = self._transport.request(
            call.method, call.url, call.headers, call.body, call.timeouts()
        )
        self._answered = True
        return resp

    def _hooked(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> HTTPResponse:
        """One request with the event hooks around it (see ``_hooks``)."""
        hooks = self._hooks
        assert hooks is not None
        request = hooks.sending(method, url, headers, body)
        sent = time.monotonic()
        resp = self._transport.request(method, url, headers, body, timeouts)
        self._answered = True
        try:
            hooks.answered(request, resp.status, resp.headers, time.monotonic() - sent)
        except BaseException:
            resp.close()
            raise
        return resp

    def _send(self, call: Call, read: Callable[[Call, HTTPResponse], T]) -> T:
        """One attempt: send ``call``, read the answer with ``read``."""
        with self._open(call) as resp:
            return read(call, resp)

    def _read_chat(self, call: Call, resp: HTTPResponse) -> ChatResponse:
        ttft = time.monotonic() - call.started
        body = resp.read(self._max_body)
        return self._chat_answer(call, resp.status, resp.headers, body, ttft)

    def _read_models(self, call: Call, resp: HTTPResponse) -> list[ModelInfo]:
        return self._models_answer(resp.status, resp.headers, resp.read(self._max_body))

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
            return c._drive(probe_steps(url, timeout))

    from concurrent.futures import ThreadPoolExecutor

    ports = ports_to_probe(ports)
    with ThreadPoolExecutor(max_workers=len(ports) or 1) as pool:
        found = list(pool.map(probe, ports))
    return [f for f in found if f is not None]

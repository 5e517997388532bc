"""What the sync and async clients share: settings, request preparation, the attempt loop's
decisions and the response side of a call. Everything here is pure; the two shells
(``_client.py``, ``_aclient.py``) and their streams only send, read and sleep.

A call goes: keywords → :class:`~lmlink._options.CallOptions` and a
:class:`~lmlink._adapt.ChatPlan` (at the boundary, once) → a :class:`Call` (the request to
send, with its own timeout and deadline) → :class:`Attempts`, which after each failure says
whether to send a changed request at once (a refusal the plan adapts to), wait and send it
again (the retry policy), or give up; and after each answer whether to ask again (a
structured answer that did not validate). Errors leave the client through
:meth:`Attempts.failed` or :meth:`ClientCore.scrub`, where the secrets are blanked out once.

Plain calls and streams run :class:`Attempts` directly; the batch runner's pool decides what
follows an item's failure in :mod:`lmlink.batch._attempts`, on the same
:class:`~lmlink._retry.RetryState` and policy, and hands each call the item's deadline.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._adapt import CapabilityStore, ChatPlan, ChatSpec
from ._answer import AnswerDecoder, decode_answer, decode_events, is_event_stream
from ._config import (
    RetryPolicy,
    Timeout,
    resolve_endpoint,
    resolve_setting,
    split_credentials,
)
from ._discovery import ServerInfo
from ._errmap import error_from_response
from ._errors import (
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    LMLinkError,
    StructuredOutputError,
)
from ._http.common import Timeouts
from ._log import log
from ._models import ChatResponse, ModelInfo
from ._options import NO_OPTIONS, CallOptions, split_options
from ._redact import Redactor
from ._retry import RetryState, reached_caller
from ._structured import OutputSpec
from ._version import __version__
from ._wire import MessagesInput, decode_models, normalize_messages, response_format_payload

__all__ = ["Attempts", "Call", "ClientCore", "StreamContext"]

if TYPE_CHECKING:
    import ssl

    from ._hooks import Hooks


DEFAULT_MAX_BODY = 64 * 1024 * 1024
_USER_AGENT = f"lmlink/{__version__}"


class Call:
    """One request to send. ``started`` is when the whole call began (retries, fallbacks
    and re-asks included): timings and the total deadline count from it; ``timeout`` is the
    call's own (the client's unless the call gave one)."""

    __slots__ = ("body", "headers", "method", "redactor", "started", "timeout", "url")

    def __init__(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeout: Timeout,
        started: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.started = time.monotonic() if started is None else started
        # Secrets of this call beyond the client's (a key in its own headers=), or None.
        self.redactor: Redactor | None = None

    @property
    def deadline(self) -> float | None:
        total = self.timeout.total
        return None if total is None else self.started + total

    def timeouts(self) -> Timeouts:
        """The transport's limits for the next attempt of this call."""
        t = self.timeout
        return Timeouts(t.connect, t.idle, self.deadline)


def _count(name: str, value: object, least: int) -> int:
    """A whole number from ``least`` to ``sys.maxsize`` (zlib and sockets take no more);
    a float with no fraction (``64e6``) is taken as one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= sys.maxsize:
        raise ConfigurationError(
            f"{name} must be a whole number from {least} to {sys.maxsize}, not {value!r}"
        )
    return value


def _with_headers(
    base: tuple[tuple[str, str], ...], extra: Sequence[tuple[str, str | None]]
) -> tuple[tuple[str, str], ...]:
    """``base`` with the headers of ``extra`` replacing those of the same name (whatever
    its case); a None value removes the header."""
    names = {name.lower() for name, _ in extra}
    kept = [(n, v) for n, v in extra if v is not None]
    return (*(h for h in base if h[0].lower() not in names), *kept)


class ClientCore:
    """Settings and pure request/response logic shared by Client and AsyncClient."""

    def __init__(
        self,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | Timeout = 60.0,
        max_retries: int = 3,
        headers: Mapping[str, str | None] | None = None,
        *,
        retry: RetryPolicy | None = None,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 256,
        max_response_bytes: int = DEFAULT_MAX_BODY,
        structured_retries: int = 1,
        proxy: str | None = None,
        trust_env: bool = False,
        event_hooks: Mapping[str, Sequence[Callable[[Any], Any]]] | None = None,
    ) -> None:
        env = os.environ
        # None unless hooks were given: the shells test exactly this, once per request.
        self._hooks: Hooks | None = None
        if event_hooks is not None:
            from ._hooks import Hooks

            self._hooks = Hooks.of(event_hooks)
        # Opt-in only: a local server is reached directly, whatever HTTP_PROXY says.
        self._proxy = proxy
        self._trust_env = trust_env
        self._endpoint = resolve_endpoint(endpoint, env)
        basic = secret = None
        if self._endpoint is not None:  # user:password@ becomes Basic auth, never text
            self._endpoint, basic, secret = split_credentials(self._endpoint)
        self._model = resolve_setting(model, env, "LMLINK_MODEL")
        self._api_key = resolve_setting(api_key, env, "LMLINK_API_KEY", "OPENAI_API_KEY")
        self.timeout = Timeout.coerce(timeout)
        if retry is None:
            retry = RetryPolicy(max_retries=max_retries)
        elif max_retries not in (3, retry.max_retries):
            raise ConfigurationError("give max_retries= or retry=, not both")
        self.retry = retry
        max_connections = _count("max_connections", max_connections, 1)
        max_response_bytes = _count("max_response_bytes", max_response_bytes, 1)
        structured_retries = _count("structured_retries", structured_retries, 0)
        self._verify = verify
        self._max_connections = max_connections
        self._max_body = max_response_bytes
        self.structured_retries = structured_retries
        self._caps = CapabilityStore()
        # Whether the server has answered this client: then a refused connection is a
        # restart worth waiting for, not a server that is not running.
        self._answered = False
        base: list[tuple[str, str]] = [("User-Agent", _USER_AGENT)]
        if self._api_key:
            base.append(("Authorization", f"Bearer {self._api_key}"))
        elif basic is not None:
            base.append(("Authorization", f"Basic {basic}"))
        # What is blanked out of errors: the key, and the credentials of the URLs.
        proxy_secret = split_credentials(proxy)[2] if proxy is not None else None
        self._redactor = Redactor((self._api_key, secret, basic, proxy_secret))
        for name, value in (headers or {}).items():
            base = [(k, v) for k, v in base if k.lower() != name.lower()]
            if value is not None:  # None leaves the header out (User-Agent, say)
                base.append((name, value))
        self._get_headers = (*base, ("Accept", "application/json"))
        self._json_headers = (
            *base,
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        )
        self._sse_headers = (
            *base,
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        )
        self._setup()

    def _setup(self) -> None:
        """Open the shell's transport (each shell has its own)."""
        raise NotImplementedError

    def _transport_settings(self) -> dict[str, Any]:
        return {
            "verify": self._verify,
            "max_connections": self._max_connections,
            "max_body": self._max_body,
        }

    @property
    def _proxied(self) -> bool:
        """Whether requests go through a proxy transport (``proxy=`` or ``trust_env``)."""
        return self._proxy is not None or self._trust_env

    # -- settings ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        """The base URL through ``/v1``."""
        return self._endpoint

    @property
    def model(self) -> str | None:
        """The default model for calls that name none."""
        return self._model

    def __repr__(self) -> str:
        key = ", api_key='***'" if self._api_key else ""
        return f"{type(self).__name__}(endpoint={self._endpoint!r}, model={self._model!r}{key})"

    def redact(self, text: str) -> str:
        """``text`` with the API key (and the credentials of the endpoint URL) blanked out:
        servers sometimes echo them."""
        return self._redactor(text)

    def scrub(self, exc: LMLinkError) -> LMLinkError:
        """``exc`` with the secrets blanked out of everything it carries: every error
        passes here on its way out of the client."""
        return self._redactor.error(exc)

    def _url(self, path: str) -> str:
        if self._endpoint is None:
            raise ConfigurationError(
                "no endpoint: pass endpoint='http://127.0.0.1:8080/v1' or set LMLINK_ENDPOINT"
            )
        return self._endpoint + path

    # -- calls ------------------------------------------------------------------------

    def _plan(
        self,
        messages: MessagesInput,
        model: str | None,
        *,
        stream: bool,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[ChatPlan, CallOptions]:
        """The plan of one chat call and its options; everything checked here, once."""
        options, fields = split_options(extra) if extra else (NO_OPTIONS, {})
        endpoint = self._endpoint
        if endpoint is None:  # "no endpoint" comes before "no model"
            self._url("")
        name = model or self._model
        if not name:
            raise ConfigurationError(
                "no model: pass model= or set LMLINK_MODEL (client.models() lists the "
                "server's models)"
            )
        response_format_payload(response_format)  # rejects what cannot be sent, early
        toolset = None
        if tools:
            from ._tools import ToolSet

            toolset = ToolSet(tools)
        spec = ChatSpec(
            model=name,
            messages=normalize_messages(messages),
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=response_format,
            output=OutputSpec.of(response_format),
            tools=toolset,
            tool_choice=tool_choice,
            reasoning=reasoning,
            extra=fields,
        )
        caps = self._caps.get(endpoint or "", name)
        plan = ChatPlan(spec, caps, stream=stream, reasks=self.structured_retries)
        return plan, options

    def _chat_call(self, plan: ChatPlan, options: CallOptions = NO_OPTIONS) -> Call:
        """The first request of ``plan``."""
        headers = self._sse_headers if plan.stream else self._json_headers
        if options.headers:
            headers = _with_headers(headers, options.headers)
        timeout = options.timeout or self.timeout
        call = Call("POST", self._url("/chat/completions"), headers, plan.body(), timeout)
        if options.secrets:
            call.redactor = self._redactor.plus(options.secrets)
        return call

    def _get_call(self, path: str) -> Call:
        return Call("GET", self._url(path), self._get_headers, None, self.timeout)

    def _attempts(self, call: Call, plan: ChatPlan | None = None) -> Attempts:
        return Attempts(self, call, plan)

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> LMLinkError:
        return error_from_response(status, headers, body, redact=self.redact)

    def _learn(self, info: ServerInfo) -> ServerInfo:
        """Remember the server's kind (it picks the reasoning controls) and attach what calls
        have learned about it."""
        known = self._caps.kinds.get(info.endpoint)
        if info.kind == "unknown" and known is not None:
            info.kind = known  # wait_ready() sees less than server_info(): keep what it found
        else:
            self._caps.set_kind(info.endpoint, info.kind)
        info.capabilities = self._caps.for_endpoint(info.endpoint)
        return info

    def _use_discovered(self, found: list[ServerInfo]) -> None:
        if not found:
            return
        info = found[0]
        self._endpoint = info.endpoint
        if not self._model and info.models:
            self._model = info.models[0]
        log.info(
            "lmlink: no endpoint configured; using the %s server found at %s (model %s)",
            info.kind,
            info.endpoint,
            self._model,
        )

    def _not_ready(self, timeout: float) -> APITimeoutError:
        return APITimeoutError(
            f"the server at {self._endpoint} was not ready within {timeout:g} s",
            phase="total",
            timeout=timeout,
        )

    def _chat_answer(
        self, call: Call, status: int, headers: Mapping[str, str], body: bytes, ttft: float
    ) -> ChatResponse:
        """The answer of a plain chat call's response, or the error it reports."""
        if status >= 300:
            raise self._status_error(status, headers, body)
        if is_event_stream(headers):
            # Streamed although not asked to: the same rules as a stream, not a JSON error.
            out = decode_events(body, redact=self.redact)
            out.ttft_s = ttft
            out.latency_s = time.monotonic() - call.started
            return out
        return self._finish_chat(call, body, ttft)

    def _models_answer(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[ModelInfo]:
        """The model list of a ``GET /models`` response, or the error it reports."""
        if status >= 300:
            raise self._status_error(status, headers, body)
        return decode_models(body, self.redact)

    def _finish_chat(self, call: Call, body: bytes, ttft: float) -> ChatResponse:
        """The answer of a plain (non-streamed) body: ``ttft_s`` is the time to its head,
        and its tokens per second count over the whole call."""
        out = decode_answer(body, redact=self.redact)
        out.ttft_s = ttft
        out.latency_s = time.monotonic() - call.started
        return out

    def _decoder(self) -> AnswerDecoder:
        return AnswerDecoder(self.redact)

    def _stream_context(self) -> StreamContext:
        return StreamContext(self)


class StreamContext:
    """What a stream may use of its client, and nothing more: planning its attempts, a
    fresh answer decoder, the size cap, the whole answer of a response that is no stream,
    and scrubbing the errors it raises. (The I/O, opening a request and sleeping, the shell
    hands the stream as two callables.)"""

    __slots__ = ("_core", "max_body")

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self.max_body = core._max_body

    def attempts(self, plan: ChatPlan, options: CallOptions, started: float) -> Attempts:
        call = self._core._chat_call(plan, options)
        call.started = started
        return self._core._attempts(call, plan)

    def decoder(self) -> AnswerDecoder:
        return self._core._decoder()

    def answer(
        self, call: Call, status: int, headers: Mapping[str, str], body: bytes
    ) -> ChatResponse:
        """A response that is not a stream: its answer, or the error it reports."""
        ttft = time.monotonic() - call.started
        return self._core._chat_answer(call, status, headers, body, ttft)

    def scrub(self, exc: LMLinkError) -> LMLinkError:
        return self._core.scrub(exc)


class Attempts:
    """The attempts of one call, pure: after each failure, whether to send a changed
    request at once (a refusal the plan adapts to), wait and send it again (the retry
    policy), or give up (the error is raised, its secrets blanked out).

    >>> run = core._attempts(call, plan)
    >>> while True:
    ...     try:
    ...         answer = send(run.call)
    ...     except LMLinkError as exc:
    ...         sleep(run.failed(exc))   # raises when the call is over
    ...         continue
    ...     if run.accept(answer):
    ...         return answer
    """

    __slots__ = ("_core", "_plan", "_state", "call")

    def __init__(self, core: ClientCore, call: Call, plan: ChatPlan | None = None) -> None:
        self._core = core
        self._plan = plan
        self._state: RetryState | None = None
        self.call = call

    def scrub(self, exc: LMLinkError) -> LMLinkError:
        """``exc`` with the client's secrets and this call's blanked out."""
        redactor = self.call.redactor
        return self._core.scrub(exc) if redactor is None else redactor.error(exc)

    def redact(self, text: str) -> str:
        redactor = self.call.redactor
        return self._core.redact(text) if redactor is None else redactor(text)

    def failed(self, exc: LMLinkError) -> float:
        """Seconds to wait before sending ``self.call`` again (0: at once, changed);
        raises ``exc`` when there is no next attempt."""
        core = self._core
        self.scrub(exc)
        plan = self._plan
        if (
            plan is not None
            and isinstance(exc, APIStatusError)
            and not reached_caller(exc)
            and plan.adapt(exc)
        ):
            self.call.body = plan.body()
            return 0.0
        state = self._state
        if state is None:
            state = RetryState(core.retry, self.call.deadline, answered=core._answered)
            self._state = state
        delay = state.delay_for(exc)
        log.info("lmlink: retry %d in %.2f s after: %s", state.retries, delay, exc)
        return delay

    def accept(self, resp: ChatResponse) -> bool:
        """Validate a structured answer; False means: send ``self.call`` again (it now asks
        for a corrected answer)."""
        plan = self._plan
        if plan is None:
            return True
        try:
            if plan.accept(resp):
                return True
        except StructuredOutputError as exc:
            raise self.scrub(exc) from None
        log.info(
            "lmlink: the answer did not match the schema; asking again: %s",
            self.redact(plan.reasked),
        )
        self.call.body = plan.body()
        return False

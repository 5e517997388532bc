"""What the sync and async clients share: settings, request preparation, the response
side of a call. Everything here is pure; the two shells in ``_client.py`` only do I/O.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._config import (
    RetryPolicy,
    Timeout,
    resolve_endpoint,
    resolve_setting,
    split_credentials,
)
from ._discovery import ServerInfo
from ._errmap import error_from_response
from ._errors import APITimeoutError, ConfigurationError, LMLinkError
from ._log import log
from ._models import ChatResponse
from ._plan import CapabilityStore, ChatPlan, ChatSpec
from ._retry import RetryState
from ._stream import StreamAccumulator
from ._structured import OutputSpec
from ._transport_base import Timeouts
from ._version import __version__
from ._wire import (
    MessagesInput,
    normalize_messages,
    parse_chat_response,
    response_format_payload,
)

__all__ = ["BaseClient", "Call"]

if TYPE_CHECKING:
    import ssl


DEFAULT_MAX_BODY = 64 * 1024 * 1024
_USER_AGENT = f"lmlink/{__version__}"


class Call:
    """One request to send. ``started`` is when the whole call began (retries, fallbacks
    and re-asks included): timings and the total deadline count from it."""

    __slots__ = ("body", "headers", "method", "started", "url")

    def __init__(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        started: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.started = time.monotonic() if started is None else started


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


class BaseClient:
    """Settings and pure request/response logic shared by Client and AsyncClient."""

    def __init__(
        self,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | Timeout = 60.0,
        max_retries: int = 3,
        headers: Mapping[str, str] | None = None,
        *,
        retry: RetryPolicy | None = None,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 256,
        max_response_bytes: int = DEFAULT_MAX_BODY,
        structured_retries: int = 1,
    ) -> None:
        env = os.environ
        self._endpoint = resolve_endpoint(endpoint, env)
        basic = password = None
        if self._endpoint is not None:  # user:password@ becomes Basic auth, never text
            self._endpoint, basic, password = split_credentials(self._endpoint)
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
        base: list[tuple[str, str]] = [("User-Agent", _USER_AGENT)]
        if self._api_key:
            base.append(("Authorization", f"Bearer {self._api_key}"))
        elif basic is not None:
            base.append(("Authorization", f"Basic {basic}"))
        # What redact() blanks out: the key, and the password and Basic value of the URL.
        self._secrets = tuple(
            s for s in (self._api_key, password, basic) if s is not None and len(s) >= 4
        )
        for name, value in (headers or {}).items():
            base = [(k, v) for k, v in base if k.lower() != name.lower()]
            base.append((name, value))
        self._get_headers = tuple([*base, ("Accept", "application/json")])
        self._json_headers = tuple(
            [*base, ("Content-Type", "application/json"), ("Accept", "application/json")]
        )
        self._sse_headers = tuple(
            [*base, ("Content-Type", "application/json"), ("Accept", "text/event-stream")]
        )
        self._setup()

    def _setup(self) -> None:
        """Open the shell's transport (each shell has its own)."""
        raise NotImplementedError

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
        """``text`` with the API key (and a password given in the endpoint URL) blanked out:
        servers sometimes echo them."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _scrub(self, exc: LMLinkError) -> LMLinkError:
        """``exc`` with the API key blanked out of its message: transport errors quote the
        server's bytes (a malformed status or header line)."""
        message = self.redact(exc.message)
        if message is not exc.message:
            exc.message = message
            exc.args = (message,)
        return exc

    def _url(self, path: str) -> str:
        if self._endpoint is None:
            raise ConfigurationError(
                "no endpoint: pass endpoint='http://127.0.0.1:8080/v1' or set LMLINK_ENDPOINT"
            )
        return self._endpoint + path

    # -- calls ------------------------------------------------------------------------

    def _deadline(self, started: float) -> float | None:
        total = self.timeout.total
        return None if total is None else started + total

    def _timeouts(self, deadline: float | None) -> Timeouts:
        return Timeouts(self.timeout.connect, self.timeout.idle, deadline)

    def _retry_state(self, deadline: float | None) -> RetryState:
        return RetryState(self.retry, deadline)

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
        extra: Mapping[str, Any] | None = None,
    ) -> ChatPlan:
        endpoint = self._endpoint or ""
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
            extra=extra or {},
        )
        caps = self._caps.get(endpoint, name)
        return ChatPlan(
            spec, caps, stream=stream, reasks=self.structured_retries, redact=self.redact
        )

    def _call(self, plan: ChatPlan, started: float | None = None) -> Call:
        """The next request of ``plan``."""
        headers = self._sse_headers if plan.stream else self._json_headers
        return Call("POST", self._url("/chat/completions"), headers, plan.body(), started)

    def _prepare_get(self, path: str) -> Call:
        return Call("GET", self._url(path), self._get_headers, None)

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

    def _use_discovered(self, info: ServerInfo) -> None:
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

    def _finish_chat(self, call: Call, body: bytes, ttft: float) -> ChatResponse:
        out = parse_chat_response(body, redact=self.redact)
        out.ttft_s = ttft
        out.latency_s = time.monotonic() - call.started
        return out

    def _accumulator(self) -> StreamAccumulator:
        return StreamAccumulator(self.redact)

"""What the sync and async clients share: settings, request preparation, the response
side of a call. Everything here is pure; the two shells in ``_client.py`` only do I/O.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._config import RetryPolicy, Timeout, resolve_endpoint, resolve_setting
from ._errmap import error_from_response
from ._errors import ConfigurationError, LMLinkError
from ._models import ChatResponse
from ._retry import RetryState
from ._stream import StreamAccumulator
from ._structured import OutputSpec
from ._transport import Timeouts
from ._version import __version__
from ._wire import (
    MessagesInput,
    build_chat_body,
    normalize_messages,
    parse_chat_response,
    response_format_payload,
)

__all__ = ["BaseClient", "Call"]

log = logging.getLogger("lmlink")

DEFAULT_MAX_BODY = 64 * 1024 * 1024
_USER_AGENT = f"lmlink/{__version__}"


class Call:
    """One prepared request: what to send, and how to read what comes back."""

    __slots__ = ("body", "headers", "method", "output", "started", "url")

    def __init__(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        output: OutputSpec | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.output = output
        self.started = time.monotonic()


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
    ) -> None:
        env = os.environ
        self._endpoint = resolve_endpoint(endpoint, env)
        self._model = resolve_setting(model, env, "LMLINK_MODEL")
        self._api_key = resolve_setting(api_key, env, "LMLINK_API_KEY", "OPENAI_API_KEY")
        self.timeout = Timeout.coerce(timeout)
        if retry is None:
            retry = RetryPolicy(max_retries=max_retries)
        elif max_retries not in (3, retry.max_retries):
            raise ConfigurationError("give max_retries= or retry=, not both")
        self.retry = retry
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, not {max_connections}")
        self._verify = verify
        self._max_connections = max_connections
        self._max_body = max_response_bytes
        base: list[tuple[str, str]] = [("User-Agent", _USER_AGENT)]
        if self._api_key:
            base.append(("Authorization", f"Bearer {self._api_key}"))
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
        """``text`` with the API key blanked out (servers sometimes echo it)."""
        key = self._api_key
        if key and len(key) >= 4 and key in text:
            return text.replace(key, "***")
        return text

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

    def _prepare_chat(
        self,
        messages: MessagesInput,
        model: str | None,
        *,
        stream: bool,
        temperature: float | None,
        max_tokens: int | None,
        response_format: Any,
        extra: Mapping[str, Any],
    ) -> Call:
        url = self._url("/chat/completions")
        name = model or self._model
        if not name:
            raise ConfigurationError(
                "no model: pass model= or set LMLINK_MODEL (client.models() lists the "
                "server's models)"
            )
        wire_format = response_format_payload(response_format)
        output = OutputSpec.of(response_format)
        body = build_chat_body(
            name,
            normalize_messages(messages),
            stream=stream,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=wire_format,
            extra=extra,
        )
        return Call("POST", url, self._sse_headers if stream else self._json_headers, body, output)

    def _prepare_get(self, path: str) -> Call:
        return Call("GET", self._url(path), self._get_headers, None)

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> LMLinkError:
        return error_from_response(status, headers, body, redact=self.redact)

    def _finish_chat(self, call: Call, body: bytes, ttft: float) -> ChatResponse:
        out = parse_chat_response(body, redact=self.redact)
        out.ttft_s = ttft
        out.latency_s = time.monotonic() - call.started
        self._parse_output(call, out)
        return out

    def _accumulator(self) -> StreamAccumulator:
        return StreamAccumulator(self.redact)

    @staticmethod
    def _parse_output(call: Call, out: ChatResponse) -> None:
        if call.output is not None:
            out.parsed = call.output.parse(out.content)
